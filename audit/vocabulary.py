"""The closed vocabulary of audit actions and outcomes, and how long each kind of event must be kept.

Owns the list a reviewer reads to know what the trail can say. Adding an action is a code change, reviewed like any
other; there is deliberately no configuration that removes one or turns auditing off.
"""

from __future__ import annotations

ACTIONS = frozenset(
    {
        # identity
        "login", "login_failed", "logout", "account.create", "account.update", "account_locked",
        "account.list", "account.role", "policy.read",
        # patients and records
        "patient.register", "patient.read", "patient.erase",
        "record.create", "record.read", "record.list", "record.download", "record.update", "record.delete",
        "lab.extract", "lab.read", "lab.correct",
        # consent (PIPL processing records: kept three years)
        "grant.create", "grant.revoke", "grant.list", "grant.receipt", "shared.list", "consent.give",
        "consent.withdraw", "breakglass",
        "totp.enroll", "totp.activate", "alert.raised",
        # keys
        "key.create", "key.rotate", "key.rewrap", "key.shred", "key.unwrap_failed",
        "key.status", "key.request", "key.approve", "key.retire",
        # the trail itself
        "audit.read", "audit.export", "audit.checkpoint", "audit.archive", "access_log.read",
        # the patient's own export (PIPL 45, issue 16)
        "export.create", "export.read", "export.download", "export.build",
        # operations on the whole vault (vault/cli/backup.py)
        "vault.backup", "vault.restore",
    }
)
OUTCOMES = frozenset({"allow", "deny", "error"})

# PIPL arts. 55-56: records of provision to third parties (grants, consents, exports) are kept three years.
LONG_RETENTION_ACTIONS = frozenset(
    {"grant.create", "grant.revoke", "consent.give", "consent.withdraw", "breakglass", "audit.export",
     "patient.erase", "key.shred", "key.request", "key.approve", "key.rotate", "key.retire",
     "account.role",  # privilege changes: kept as long as the consents they could have bypassed
     "export.create", "export.download", "export.build",  # issue 16: the patient's copies (PIPL 45)
     "vault.backup", "vault.restore"}  # copies of all PHI made and put back (BAK-1)
)
