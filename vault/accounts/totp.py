"""TOTP second factor (RFC 6238) for staff roles: enrolment, activation, verification with replay protection.

Owns the TOTP secret's life: generated here, shown once at enrolment, stored sealed under kms's single-purpose
`totp` key bound to the account id, and checked against the clock the vault passes in. A code is accepted at most
once (the last used time step is stored), so a replayed code in the same step is refused.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pyotp

from kms import DataKey
from vault import fields
from vault.db.models import Account
from vault.errors import InvalidCredentials

if TYPE_CHECKING:
    from vault.runtime import Vault

PURPOSE = "totp"
ROLES_REQUIRING_TOTP = frozenset({"doctor", "escort", "auditor", "sysadmin", "secadmin", "auditadmin"})
STEP = 30
ISSUER = "Health Vault"


def _key(vault: Vault) -> DataKey:
    return DataKey.from_bytes(vault.keys.service_key(PURPOSE), key_id=hashlib.sha256(b"hv/totp").digest()[:16])


def _where(account: Account) -> dict:
    return dict(table="accounts", column="totp_secret", row_id=account.id, patient_id="-")


def enroll(vault: Vault, account: Account) -> tuple[str, str]:
    """A fresh secret (replacing an unactivated one); returns (secret, otpauth URI) to show once."""
    secret = pyotp.random_base32()
    account.totp_secret_enc = fields.seal(_key(vault), secret, **_where(account))
    account.totp_enabled = False
    account.totp_last_step = None
    return secret, pyotp.TOTP(secret).provisioning_uri(name=account.username, issuer_name=ISSUER)


def check(vault: Vault, account: Account, otp: str | None) -> bool:
    """True once per valid code (current step ± 1); records the step so the same code cannot be replayed."""
    if not otp or account.totp_secret_enc is None or not otp.isdigit():
        return False
    secret = fields.open_text(_key(vault), account.totp_secret_enc, **_where(account))
    totp = pyotp.TOTP(secret, interval=STEP)
    now = vault.clock().timestamp()
    current = int(now // STEP)
    for step in (current, current - 1, current + 1):
        if totp.at(step * STEP) == otp:
            if account.totp_last_step is not None and step <= account.totp_last_step:
                return False
            account.totp_last_step = step
            return True
    return False


def require(vault: Vault, account: Account, otp: str | None) -> None:
    if not check(vault, account, otp):
        raise InvalidCredentials()
