"""Issue 6 item 6: the production profile refuses weak deployments; `healthvault doctor` says what is lacking."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import CHEAP_KDF, PASSPHRASE
from vault import profile
from vault.profile import ProductionRefused
from vault.runtime import init_data_dir, open_vault
from vault.settings import Settings

# A deployment that meets every refusing floor (the PIN file is made private by the fixture).
STRONG = dict(kms_provider="pkcs11", pkcs11_module="/usr/lib/softhsm/libsofthsm2.so", pkcs11_token_label="hv",
              admin_networks="10.0.0.0/8", profile="production")


@pytest.fixture
def pin_file(tmp_path):
    path = tmp_path / "pin"
    path.write_text("1234\n")
    path.chmod(0o600)
    return path


def _refused(settings: Settings, environ=None) -> set[str]:
    checks = profile.settings_checks(settings, environ=environ or {})
    try:
        profile.refuse_unless_ready(checks, settings)
    except ProductionRefused as exc:
        return {c.id for c in exc.failures}
    return set()


def test_strong_production_settings_pass_every_refusing_check(tmp_path, pin_file):
    settings = Settings.load(tmp_path / "var", pkcs11_pin_file=str(pin_file), **STRONG)
    assert _refused(settings) == set()


def test_production_refuses_the_local_provider_and_a_development_root_key(tmp_path, pin_file):
    local = Settings.load(tmp_path / "var", **{**STRONG, "kms_provider": "local"})
    assert "root-key-in-module" in _refused(local)
    env_key = Settings.load(tmp_path / "var", pkcs11_pin_file=str(pin_file), **STRONG)
    assert _refused(env_key, {"HEALTHVAULT_ROOT_KEY": "x"}) == {"no-development-root-key"}


@pytest.mark.parametrize("override, check_id", [
    ({"lockout_threshold": 10}, "lockout"),
    ({"lockout_minutes": 1}, "lockout"),
    ({"idle_timeout_seconds": 7200}, "session-timeouts"),
    ({"token_ttl_seconds": 7 * 86400}, "session-timeouts"),
    ({"password_time_cost": 1}, "password-hash-cost"),
    ({"staff_password_max_age_days": 365}, "staff-password-ageing"),
    ({"password_history": 1}, "staff-password-ageing"),
    ({"admin_networks": None}, "admin-networks"),
    ({"key_cache_max_age": 86400.0}, "key-cache-age"),
    ({"audit_checkpoint_every_seconds": 3600.0}, "checkpoint-interval"),
])
def test_production_refuses_each_weak_setting(tmp_path, pin_file, override, check_id):
    settings = Settings.load(tmp_path / "var", pkcs11_pin_file=str(pin_file), **{**STRONG, **override})
    assert _refused(settings) == {check_id}
    development = Settings.load(tmp_path / "var", pkcs11_pin_file=str(pin_file),
                                **{**STRONG, **override, "profile": "development"})
    assert _refused(development) == set()  # development reports, never refuses


def test_a_pin_file_readable_by_others_or_no_pin_at_all_is_refused(tmp_path, pin_file):
    pin_file.chmod(0o644)
    settings = Settings.load(tmp_path / "var", pkcs11_pin_file=str(pin_file), **STRONG)
    assert _refused(settings) == {"pin-file-private"}
    no_pin = Settings.load(tmp_path / "var", **STRONG)
    assert _refused(no_pin) == {"pin-given"}
    assert _refused(no_pin, {"HEALTHVAULT_PKCS11_PIN": "1234"}) == set()


def test_open_vault_in_production_with_the_local_provider_refuses_before_touching_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    dev = Settings.load(tmp_path / "var", password_time_cost=1, password_memory_kib=1024, password_parallelism=1)
    init_data_dir(dev, PASSPHRASE, kdf_params=CHEAP_KDF)
    prod = Settings.load(tmp_path / "var", profile="production", admin_networks="127.0.0.1/32")
    with pytest.raises(ProductionRefused) as refused:
        open_vault(prod, PASSPHRASE)
    assert "kms_provider=pkcs11" in str(refused.value)
    assert PASSPHRASE.decode() not in str(refused.value)


def test_unknown_profile_suite_or_provider_is_a_settings_error(tmp_path):
    for field in ("profile", "crypto_suite", "kms_provider"):
        with pytest.raises(ValueError, match=field):
            Settings.load(tmp_path / "var", **{field: "weak"})


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
    env.update(HEALTHVAULT_DATA_DIR=str(tmp_path / "var"), HEALTHVAULT_PASSPHRASE="a passphrase for doctor")
    return env


def test_production_serve_refuses_plain_http_even_on_loopback(cli_env):
    result = _cli("serve", "--port", "1", env={**cli_env, "HEALTHVAULT_PROFILE": "production"})
    assert result.returncode != 0
    assert "plain HTTP" in result.stderr and "kms_provider=pkcs11" in result.stderr


def test_doctor_lists_what_is_lacking_and_exits_nonzero(cli_env):
    assert _cli("init", env=cli_env).returncode == 0
    result = _cli("doctor", "--json", env=cli_env)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    lacking = {c["id"] for c in report["checks"] if not c["ok"]}
    assert {"root-key-in-module", "sm-suite", "admin-networks", "central-audit-sink"} <= lacking
    assert report["lacking"] == len(lacking)
    assert all(c["rows"] and c["scope"] for c in report["checks"])
    table = _cli("doctor", env=cli_env)
    assert "LACKS" in table.stdout and "密评" in table.stdout and "MLPS level 3" in table.stdout
    assert "a passphrase for doctor" not in table.stdout + table.stderr


def test_doctor_database_checks_see_staff_without_two_factor(vault, clock):
    from vault.accounts import service as accounts
    from vault.identity import RequestContext

    with vault.session() as session:
        accounts.create(session, vault, username="doc-no-otp", role="doctor", password="Initial-Passw0rd!",
                              ctx=RequestContext(request_id="t"))
        session.commit()
    checks = {c.id: c for c in profile.run_all(vault.settings, session_factory=vault.session, now=clock())}
    assert not checks["staff-two-factor"].ok and "1 active staff" in checks["staff-two-factor"].message
