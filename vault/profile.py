"""What a deployment still lacks for MLPS level 3 and 密评, and what the production profile refuses to run with.

Owns: the deployment checks, each tied to the COMPLIANCE rows it evidences, used twice — `healthvault doctor`
prints all of them; `profile = "production"` refuses to start (or to serve) while any check marked `refuse` fails.
Never: reads a secret to judge it (a PIN file is judged by its permissions, a passphrase not at all), or changes
anything; it only reports. Organisational duties (filing, staffing, drills) are out of scope: a check here is
something software can see.

Floors follow the defaults documented in `vault/settings.py` (assessor practice for MLPS level 3): production may
be stricter than a default, never weaker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from vault.settings import Settings

ROOT_KEY_ENV = "HEALTHVAULT_ROOT_KEY"
PIN_ENV = "HEALTHVAULT_PKCS11_PIN"


@dataclasses.dataclass(frozen=True)
class Check:
    """One finding. `scope` is "mlps", "密评" or both; `refuse` means production will not start while it fails."""

    id: str
    rows: str
    scope: str
    ok: bool
    message: str
    refuse: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class ProductionRefused(Exception):
    """The production profile found settings it will not run with; the message lists them (no secrets)."""

    def __init__(self, failures: list[Check]) -> None:
        self.failures = failures
        lines = "\n".join(f"  - [{c.rows}] {c.message}" for c in failures)
        super().__init__(f"the production profile refuses to start:\n{lines}")


def _check(id: str, rows: str, scope: str, ok: bool, message: str, *, refuse: bool = False) -> Check:
    return Check(id=id, rows=rows, scope=scope, ok=bool(ok), message=message, refuse=refuse)


def _private(path: Path) -> bool:
    """True when only the owner may read the file or directory (no group/other bits)."""
    try:
        return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    except OSError:
        return False


def settings_checks(settings: Settings, *, environ: Mapping[str, str] = os.environ) -> list[Check]:
    """Checks that need nothing but the settings and the environment (safe before any key is opened)."""
    s = settings
    checks = [
        _check("root-key-in-module", "CRY-2/3", "密评", s.kms_provider == "pkcs11",
               "root key is held by a PKCS#11 cryptographic module" if s.kms_provider == "pkcs11" else
               "root key is in a local sealed file: set kms_provider=pkcs11 (a GB/T 37092 level 2+ module)",
               refuse=True),
        _check("no-development-root-key", "CRY-2/3", "mlps+密评", not environ.get(ROOT_KEY_ENV),
               f"${ROOT_KEY_ENV} is set: a development root key in the environment" if environ.get(ROOT_KEY_ENV)
               else "no development root key in the environment", refuse=True),
        _check("sm-suite", "CRY-1", "密评", s.crypto_suite == "sm",
               "new data is protected with the SM suite (SM4-GCM, HMAC-SM3, SM3, SM2)" if s.crypto_suite == "sm"
               else "crypto_suite is 'aes': 密评 expects crypto_suite=sm (GB/T 39786)"),
        _check("password-hash-cost", "AUTH-1", "mlps",
               s.password_time_cost >= 3 and s.password_memory_kib >= 64 * 1024 and s.password_parallelism >= 1,
               f"argon2id t={s.password_time_cost}, m={s.password_memory_kib} KiB, p={s.password_parallelism} "
               "(floor: RFC 9106 second option, t=3, m=64 MiB)", refuse=True),
        _check("lockout", "AUTH-3", "mlps",
               1 <= s.lockout_threshold <= 5 and s.lockout_minutes >= 15,
               f"lock after {s.lockout_threshold} failures for {s.lockout_minutes} min (floor: ≤ 5 failures, ≥ 15 min)",
               refuse=True),
        _check("session-timeouts", "AUTH-4", "mlps",
               0 < s.idle_timeout_seconds <= 15 * 60 and 0 < s.token_ttl_seconds <= 12 * 3600,
               f"idle timeout {s.idle_timeout_seconds} s, token lifetime {s.token_ttl_seconds} s "
               "(floor: idle ≤ 900 s, lifetime ≤ 12 h)", refuse=True),
        _check("staff-password-ageing", "AUTH-2", "mlps",
               0 < s.staff_password_max_age_days <= 90 and s.password_history >= 5,
               f"staff passwords expire after {s.staff_password_max_age_days} d, history {s.password_history} "
               "(floor: ≤ 90 d, ≥ 5)", refuse=True),
        _check("idle-staff-disabled", "AC-2", "mlps", 0 < s.staff_idle_disable_days <= 90,
               f"idle staff accounts disabled after {s.staff_idle_disable_days} d (floor: ≤ 90 d)", refuse=True),
        _check("admin-networks", "IP-3", "mlps", bool(s.admin_networks),
               f"administrative routes limited to {s.admin_networks}" if s.admin_networks else
               "admin_networks is not set: administrative and audit routes are reachable from anywhere",
               refuse=True),
        _check("key-cache-age", "RIP-1/2", "mlps+密评", 0 < s.key_cache_max_age <= 3600,
               f"unwrapped keys leave memory after {s.key_cache_max_age:g} s (floor: ≤ 3600 s)", refuse=True),
        _check("checkpoint-interval", "AUD-3", "mlps", 0 < s.audit_checkpoint_every_seconds <= 300,
               f"audit checkpoints signed at least every {s.audit_checkpoint_every_seconds:g} s (floor: ≤ 300 s)",
               refuse=True),
        _check("grant-window", "PIPL-3", "mlps", 0 < s.grant_max_days <= 90,
               f"consent grants last at most {s.grant_max_days} d (floor: ≤ 90 d)", refuse=True),
        _check("central-audit-sink", "AUD-7", "mlps", bool(s.audit_sink),
               f"audit events copied to {s.audit_sink.split('://')[0]}://…" if s.audit_sink else
               "audit_sink is not set: MLPS level 3 expects audit events collected centrally"),
        _check("alert-webhook", "IP-4", "mlps", bool(s.alert_webhook),
               "security alerts are posted to a webhook" if s.alert_webhook else
               "alert_webhook is not set: denial bursts and break-glass raise audit events but notify nobody"),
        _check("server-database", "BAK-1", "mlps", not s.is_sqlite,
               "data on a database server" if not s.is_sqlite else
               "embedded SQLite: fine for one host; level 3 expects backups off the host and a tested restore"),
    ]
    if s.kms_provider == "pkcs11":
        configured = bool(s.pkcs11_module and s.pkcs11_token_label)
        checks.append(_check("pkcs11-configured", "CRY-2/3", "密评", configured,
                             "PKCS#11 module and token label are set" if configured else
                             "kms_provider=pkcs11 needs pkcs11_module and pkcs11_token_label", refuse=True))
        if s.pkcs11_pin_file:
            private = _private(Path(s.pkcs11_pin_file))
            checks.append(_check("pin-file-private", "CRY-2/3", "密评", private,
                                 "the PKCS#11 PIN file is readable by its owner only" if private else
                                 "the PKCS#11 PIN file is missing or readable by group/others (chmod 600)",
                                 refuse=True))
        elif not environ.get(PIN_ENV):
            checks.append(_check("pin-given", "CRY-2/3", "密评", False,
                                 f"no PKCS#11 PIN source: set pkcs11_pin_file or ${PIN_ENV}", refuse=True))
    if s.data_dir.exists():
        private = _private(s.data_dir)
        checks.append(_check("data-dir-private", "CONF-1", "mlps", private,
                             f"{s.data_dir} is private to the service account" if private else
                             f"{s.data_dir} is readable by group/others (chmod 700)", refuse=True))
    return checks


def serving_checks(settings: Settings, *, host: str, tls: bool) -> list[Check]:
    """Transport checks for `serve`: production serves HTTPS only, loopback included (CONF-2, AUTH-5)."""
    return [_check("tls", "CONF-2", "mlps+密评", tls,
                   "HTTPS" if tls else f"plain HTTP on {host}: pass --tls-cert and --tls-key", refuse=True)]


def database_checks(session, *, now: dt.datetime, settings: Settings) -> list[Check]:
    """Checks that read the data database (no keys needed): two-factor coverage and checkpoint freshness."""
    from sqlalchemy import func, select

    from audit.models import Checkpoint
    from vault.db.models import STAFF_ROLES, Account

    without_totp = session.scalar(select(func.count()).select_from(Account).where(
        Account.role.in_(STAFF_ROLES), Account.is_active.is_(True), Account.totp_enabled.is_(False))) or 0
    latest = session.scalar(select(func.max(Checkpoint.created_at)).where(Checkpoint.kind == "checkpoint"))
    if latest is not None and latest.tzinfo is None:
        latest = latest.replace(tzinfo=dt.UTC)
    limit = dt.timedelta(seconds=max(60.0, 3 * settings.audit_checkpoint_every_seconds))
    fresh = latest is not None and now - latest <= limit
    return [
        _check("staff-two-factor", "AUTH-6", "mlps", without_totp == 0,
               "every active staff account has two-factor sign-in" if not without_totp else
               f"{without_totp} active staff account(s) have not enrolled two-factor sign-in yet"),
        _check("checkpoints-fresh", "AUD-3", "mlps", fresh,
               "a signed audit checkpoint is recent" if fresh else
               "no signed audit checkpoint recently: is `healthvault serve` (its checkpointer) running?"),
    ]


def refuse_unless_ready(checks: list[Check], settings: Settings) -> None:
    """Raise ProductionRefused when the production profile is on and a refusing check fails."""
    if settings.profile != "production":
        return
    failures = [c for c in checks if c.refuse and not c.ok]
    if failures:
        raise ProductionRefused(failures)


def run_all(settings: Settings, *, session_factory: Callable | None = None, now: dt.datetime | None = None,
            environ: Mapping[str, str] = os.environ) -> list[Check]:
    """Every check doctor reports; database checks only when a session factory is given."""
    checks = settings_checks(settings, environ=environ)
    if session_factory is not None:
        with session_factory() as session:
            checks += database_checks(session, now=now or dt.datetime.now(dt.UTC), settings=settings)
    return checks
