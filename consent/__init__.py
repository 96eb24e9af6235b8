"""Authorization: Casbin decides every access, from role policy, ownership, consent grants and break-glass claims.

Owns the authorization model (`model.conf`), the static role policy (`policy.csv`), the grants and break-glass tables
and the decision function. Grants are the source of truth in their own table and reach Casbin as policies loaded per
request by an indexed query (caller, patient), into an enforcer private to the calling thread — so a revocation bites
on the very next request in every process, and no enforcer is shared between threads. Nothing read from the grant or
break-glass tables is ever kept across requests; the only decisions kept are those that read no grant at all (a role
policy or ownership: `engine.py` decides each (role, action, owner-or-not) once per process, and a test compares every
kept answer with a fresh enforcer). It may
use kms (receipt signing) but never imports the vault, and never decrypts PHI.
"""
