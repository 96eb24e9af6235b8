"""Authorization: Casbin decides every access, from role policy, ownership, consent grants and break-glass claims.

Owns the authorization model (`model.conf`), the static role policy (`policy.csv`), the grants and break-glass tables
and the decision function. Grants are the source of truth in their own table and reach Casbin as policies loaded per
request by an indexed query (caller, patient), into an enforcer private to the calling thread — so a revocation bites
on the very next request in every process, no decision is cached, and no enforcer is shared between threads. It may
use kms (receipt signing) but never imports the vault, and never decrypts PHI.
"""
