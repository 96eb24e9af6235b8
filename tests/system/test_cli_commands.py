"""The CLI package (issue 13): every verb and option of `healthvault` as before the split, each command group found
through `vault.cli.COMMANDS`, and the package docstring naming every command."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest

import vault.cli
from vault.cli import COMMANDS, main

# Every command path and its parameters: the CLI's contract with operators' scripts (no verb or option changes).
# A new group (a module in vault/cli/ and a line in COMMANDS) adds its verbs here and to vault/cli's docstring.
VERBS = {
    "audit archive": ["--data-dir", "--out", "--passphrase-file"],
    "audit checkpoint": ["--data-dir", "--passphrase-file"],
    "audit export": ["--data-dir", "--out", "--passphrase-file", "--since", "--until"],
    "audit public-key": ["--data-dir", "--passphrase-file"],
    "audit trace": ["--data-dir", "--passphrase-file", "FILE"],
    "audit verify": ["--key", "EXPORT_DIR"],
    "backup": ["--data-dir", "--out", "--passphrase-file"],
    "doctor": ["--data-dir", "--json"],
    "init": ["--data-dir", "--passphrase-file"],
    "keys retire": ["--data-dir", "--grace-seconds", "--passphrase-file"],
    "keys rewrap": ["--batch-size", "--data-dir", "--grace-seconds", "--passphrase-file", "--pause-ms", "--retire"],
    "keys rotate": ["--all-keks", "--data-dir", "--kek", "--passphrase-file", "--root"],
    "keys status": ["--data-dir", "--json", "--passphrase-file"],
    "ocr": ["--json", "--pretty", "FILES"],
    "worker": ["--concurrency", "--data-dir", "--passphrase-file"],
    "patients erase": ["--data-dir", "--passphrase-file", "--yes", "PATIENT_ID"],
    "restore": ["--data-dir", "--force", "--passphrase-file", "--verify", "BACKUP_DIR"],
    "serve": ["--data-dir", "--host", "--passphrase-file", "--port", "--tls-cert", "--tls-key", "--workers"],
    "users add": ["--data-dir", "--passphrase-file", "--password-file", "--role", "--username"],
    "users disable-idle": ["--data-dir", "--passphrase-file"],
}


def _verbs(command: click.Command, path: list[str], ctx: click.Context) -> dict[str, list[str]]:
    if isinstance(command, click.Group):
        found: dict[str, list[str]] = {}
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            found.update(_verbs(sub, [*path, name], ctx))
        return found
    return {" ".join(path): sorted(o for p in command.params
                                   for o in (p.opts if isinstance(p, click.Option) else [str(p.name).upper()]))}


def test_every_verb_and_option_is_as_before():
    assert _verbs(main, [], click.Context(main)) == VERBS


def test_every_registered_group_resolves_to_a_click_command():
    ctx = click.Context(main)
    for name in COMMANDS:
        assert isinstance(main.get_command(ctx, name), click.Command), name
    assert main.get_command(ctx, "no-such-command") is None


def test_registrations_name_only_cli_modules():
    """A registration is a string the import checker cannot see: it may name vault/cli/ modules and ocr/cli.py only,
    so no command slips an import of api/ (or anything else) past tests/system/test_architecture.py."""
    modules = {target.partition(":")[0] for target in COMMANDS.values()}
    assert {m for m in modules if not (m.startswith("vault.cli.") or m == "ocr.cli")} == set()


def test_the_package_docstring_lists_every_command():
    doc = vault.cli.__doc__ or ""
    for verb in VERBS:
        group, _, sub = verb.partition(" ")
        line = next((ln for ln in doc.splitlines() if re.match(rf"\s+healthvault {re.escape(group)}\b", ln)), None)
        assert line is not None, f"the docstring of vault/cli/__init__.py does not list `healthvault {group}`"
        assert not sub or re.search(rf"\b{re.escape(sub)}\b", line), f"`healthvault {verb}` is not listed"


def test_a_registration_that_names_no_command_fails_loudly(monkeypatch):
    monkeypatch.setitem(COMMANDS, "broken", "vault.cli:PASSPHRASE_ENV")
    with pytest.raises(TypeError, match="not a click command"):
        main.get_command(click.Context(main), "broken")


def test_an_unknown_verb_exits_2_and_the_module_runs():
    result = subprocess.run([sys.executable, "-m", "vault.cli", "no-such-command"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "No such command" in result.stderr
    listed = subprocess.run([sys.executable, "-m", "vault.cli", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0
    assert [ln.split()[0] for ln in listed.stdout.split("Commands:")[1].splitlines() if ln.strip()] == sorted(COMMANDS)
