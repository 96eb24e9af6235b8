"""Deployment settings.

Owns every tunable of a vault instance and where it comes from (arguments first, then `HEALTHVAULT_*` environment
variables, then defaults). Secrets (the root-key passphrase, a development root key) are read here but never stored on
the settings object's repr and never logged. There is deliberately no setting that disables auditing or encryption.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

ENV_PREFIX = "HEALTHVAULT_"
DEFAULT_DATA_DIR = "./var"
MiB = 1024 * 1024
MIN_LOG_RETENTION_DAYS = 184
CRYPTO_SUITES = frozenset({"aes", "sm"})
KMS_PROVIDERS = frozenset({"local", "pkcs11"})
PROFILES = frozenset({"development", "production"})
JOB_QUEUES = frozenset({"pool", "procrastinate"})


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else default


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    keystore_url: str
    keystore_schema: str | None
    max_upload_bytes: int = 256 * MiB
    token_ttl_seconds: int = 8 * 3600
    # argon2id cost; the defaults follow RFC 9106's second recommended option. Tests lower them explicitly.
    password_time_cost: int = 3
    password_memory_kib: int = 64 * 1024
    password_parallelism: int = 4
    key_cache_max_age: float = 300.0
    key_cache_max_uses: int = 100_000
    # Audit: K hash chains (None = 16 on PostgreSQL, 1 on SQLite, whose single writer gains nothing from more).
    audit_chains: int | None = None
    audit_checkpoint_every_events: int = 1000
    audit_checkpoint_every_seconds: float = 10.0
    audit_origin: str = "healthvault.local/audit"
    # Optional central collector (syslog+udp://host:514 or tcp://host:port); PHI-free event copies.
    audit_sink: str | None = None
    # Events are kept at least this long (floor 184 days, enforced); grant/consent/export events three years.
    audit_retention_days: int = 365
    # Consent and sign-in (issue 4); the numbers are common assessor practice, kept configurable.
    grant_max_days: int = 30
    lockout_threshold: int = 5
    lockout_minutes: int = 15
    idle_timeout_seconds: int = 15 * 60
    staff_password_max_age_days: int = 90
    password_history: int = 5
    staff_idle_disable_days: int = 90
    # IP-3: comma-separated CIDRs allowed to reach administrative and audit operations (None: no restriction).
    admin_networks: str | None = None
    # Comma-separated addresses or CIDRs of the reverse proxies (load balancers) whose X-Forwarded-For and
    # X-Forwarded-Proto are believed. None: none; the client address (rate limits, audit, admin networks) is always
    # the TCP peer, so no local process can choose it by sending a header.
    trusted_proxies: str | None = None
    # IP-4: denials by one actor within a minute that raise an alert, and where alerts are POSTed (PHI-free JSON).
    alert_denials_per_minute: int = 20
    # Rate limits (vault/access/ratelimit.py): attempts at registration, sign-in, TOTP steps and password change per
    # window, per client address and per target (username or ID number).
    rate_limit_window_seconds: int = 600
    rate_limit_per_client: int = 300
    rate_limit_per_target: int = 20
    # Break-glass claims one doctor may make in 24 hours before a claim is refused (429, audited).
    breakglass_daily_cap: int = 3
    # Real-name verification at registration (vault/patients/realname.py): "none", or "package.module:factory", a
    # provider (e.g. an SMS code to the phone) the factory makes from these settings. None ships with the vault.
    realname_provider: str = "none"
    alert_webhook: str | None = None
    # LOG-1: service and access logs are kept at least 184 days (Cybersecurity Law art. 21: six months).
    log_retention_days: int = 365
    # Issue 6. Cipher suite for every NEW ciphertext, blind index, audit hash and checkpoint signature:
    # "aes" (AES-256-GCM, HMAC-SHA-256, SHA-256, Ed25519) or "sm" (SM4-GCM, HMAC-SM3, SM3, SM2; GB/T 39786).
    # Old data keeps decrypting whatever the setting: every ciphertext header names its suite.
    crypto_suite: str = "aes"
    # Where the root key lives: "local" (sealed file) or "pkcs11" (non-extractable key in a PKCS#11 token).
    # The PIN is never a setting: $HEALTHVAULT_PKCS11_PIN, or the file named by pkcs11_pin_file.
    kms_provider: str = "local"
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_key_label: str = "healthvault-root"
    pkcs11_pin_file: str | None = None
    # PIPL-1: the privacy notice patients consent to (None: the notice bundled with the vault). Its hash is stored
    # with every consent; a changed notice forces re-consent before further processing.
    privacy_notice_path: str | None = None
    # Issue 16: uploads are stored as their sanitized copy; the untouched original is kept too (encrypted) only if set.
    keep_original_uploads: bool = False
    # Issue 17. Where file blobs live: None = the data directory's blobs/ (embedded default), or s3://bucket/prefix
    # (S3-compatible storage; endpoint and credentials from the standard AWS variables and files, never from here).
    blob_url: str | None = None
    # Where background jobs (OCR) run: "pool" (threads of the serving process; the embedded default) or
    # "procrastinate" (a queue in PostgreSQL, run by `healthvault worker` processes on any machine; PostgreSQL only).
    job_queue: str = "pool"
    # Queue workers beat every job_heartbeat_seconds; one silent for job_stalled_seconds is dead and its jobs rerun.
    job_heartbeat_seconds: float = 10.0
    job_stalled_seconds: float = 30.0
    # "development" or "production"; production refuses the local provider, plain HTTP and weak settings.
    profile: str = "development"

    def __post_init__(self) -> None:
        if self.log_retention_days < MIN_LOG_RETENTION_DAYS:
            raise ValueError(f"log_retention_days must be at least {MIN_LOG_RETENTION_DAYS} (six months)")
        if self.audit_retention_days < MIN_LOG_RETENTION_DAYS:
            raise ValueError(f"audit_retention_days must be at least {MIN_LOG_RETENTION_DAYS} (six months)")
        for name, allowed in (("crypto_suite", CRYPTO_SUITES), ("kms_provider", KMS_PROVIDERS), ("profile", PROFILES),
                              ("job_queue", JOB_QUEUES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(sorted(allowed))}")
        if self.realname_provider != "none" and not re.fullmatch(r"[\w.]+:\w+", self.realname_provider):
            raise ValueError('realname_provider must be "none" or "package.module:factory"')
        if self.blob_url is not None and not self.blob_url.startswith("s3://"):
            raise ValueError("blob_url must look like s3://bucket/prefix")
        if self.job_queue == "procrastinate" and self.is_sqlite:
            raise ValueError("job_queue = procrastinate needs PostgreSQL (database_url)")

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def root_key_path(self) -> Path:
        return self.data_dir / "keys" / "root.key"

    @property
    def effective_audit_chains(self) -> int:
        if self.audit_chains is not None:
            return max(1, self.audit_chains)
        return 1 if self.is_sqlite else 16

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def load(cls, data_dir: str | Path | None = None, **overrides) -> Settings:
        """Settings for `data_dir` (else $HEALTHVAULT_DATA_DIR, else ./var), env vars filling what is not given."""
        root = Path(data_dir or _env("DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
        database_url = _env("DATABASE_URL") or f"sqlite:///{root / 'vault.db'}"
        keystore_url = _env("KEYSTORE_URL")
        keystore_schema = None
        if keystore_url is not None and not keystore_url.startswith("sqlite"):
            keystore_schema = _env("KEYSTORE_SCHEMA")  # an explicit key-store server may still want its own schema
        if keystore_url is None:
            if database_url.startswith("sqlite"):
                keystore_url = f"sqlite:///{root / 'keys' / 'keys.db'}"
            else:
                # Same server, own schema: restoring a data-schema backup never brings back a destroyed KEK.
                keystore_url = database_url
                keystore_schema = _env("KEYSTORE_SCHEMA", "hv_keys")
        values: dict[str, Any] = dict(
            data_dir=root,
            database_url=database_url,
            keystore_url=keystore_url,
            keystore_schema=keystore_schema,
        )
        for name, kind in (("max_upload_bytes", int), ("token_ttl_seconds", int), ("audit_chains", int),
                           ("audit_checkpoint_every_events", int), ("audit_checkpoint_every_seconds", float),
                           ("audit_origin", str), ("audit_sink", str), ("log_retention_days", int),
                           ("audit_retention_days", int), ("grant_max_days", int), ("lockout_threshold", int),
                           ("lockout_minutes", int), ("idle_timeout_seconds", int), ("admin_networks", str),
                           ("staff_password_max_age_days", int), ("password_history", int),
                           ("staff_idle_disable_days", int), ("trusted_proxies", str),
                           ("alert_denials_per_minute", int), ("alert_webhook", str), ("breakglass_daily_cap", int),
                           ("rate_limit_window_seconds", int), ("rate_limit_per_client", int),
                           ("rate_limit_per_target", int), ("realname_provider", str),
                           ("crypto_suite", str), ("kms_provider", str), ("pkcs11_module", str),
                           ("pkcs11_token_label", str), ("pkcs11_key_label", str), ("pkcs11_pin_file", str),
                           ("privacy_notice_path", str), ("profile", str), ("keep_original_uploads", _flag),
                           ("blob_url", str), ("job_queue", str),
                           ("job_heartbeat_seconds", float), ("job_stalled_seconds", float)):
            raw = _env(name.upper())
            if raw is not None:
                values[name] = kind(raw)
        values.update(overrides)
        return cls(**values)
