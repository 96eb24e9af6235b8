"""The administrators' console pages, as far as 三权分立 (separation of duties, AC-3) lets each of them act.

Owns the browser shape of account and key administration: the sysadmin lists, creates (doctor, escort, auditor),
disables/enables and unlocks accounts; the secadmin moves a staff account between doctor, escort and auditor, and
requests and approves root-key rotations (the approver must be a different secadmin: vault.keys decides). Every call
goes to the same services as /v1/accounts and /v1/keys (vault.accounts.admin, vault.keys.rotation), which pass the gate
and audit. Never shows a password hash, a TOTP secret, key material or PHI.
"""

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.console.pages import field
from api.console.session import open_console, page
from vault.accounts import admin as accounts
from vault.errors import InvalidInput
from vault.identity import Identity
from vault.keys import rotation as keyops

router = APIRouter(include_in_schema=False)

SYSADMIN = frozenset({"sysadmin"})
SECADMIN = frozenset({"secadmin"})
STAFF_ROLES = ("doctor", "escort", "auditor")


def _account_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput("account id must be an id", extra={"reason": "account_id"}) from None


@router.get("/accounts")
@page
async def accounts_page(request: Request) -> Response:
    console = await open_console(request)
    after = request.query_params.get("after")
    if after is not None and len(after) > 64:
        raise InvalidInput("Invalid cursor")

    def work(session, identity: Identity):
        return accounts.list_accounts(session, console.vault, identity=identity, ctx=console.ctx, limit=50,
                                      after=after)

    views, cursor = await console.run(work, roles=SYSADMIN)
    return console.page("accounts.html", accounts=views, next_cursor=cursor, roles=STAFF_ROLES)


@router.post("/accounts")
@page
async def create_account(request: Request) -> Response:
    console = await open_console(request)
    username, password, role = field(console, "username"), field(console, "password"), field(console, "role")

    def work(session, identity: Identity) -> None:
        accounts.create_staff(session, console.vault, identity=identity, ctx=console.ctx, username=username,
                              password=password, role=role)

    await console.run(work, roles=SYSADMIN)
    return console.redirect("/accounts")


@router.post("/accounts/{account_id}/active")
@page
async def set_active(request: Request, account_id: str) -> Response:
    console = await open_console(request)
    aid = _account_id(account_id)
    active = console.form.get("active") == "yes"

    def work(session, identity: Identity) -> None:
        accounts.set_active(session, console.vault, identity=identity, ctx=console.ctx, account_id=aid, active=active)

    await console.run(work, roles=SYSADMIN)
    return console.redirect("/accounts")


@router.post("/accounts/{account_id}/unlock")
@page
async def unlock(request: Request, account_id: str) -> Response:
    console = await open_console(request)
    aid = _account_id(account_id)

    def work(session, identity: Identity) -> None:
        accounts.unlock(session, console.vault, identity=identity, ctx=console.ctx, account_id=aid)

    await console.run(work, roles=SYSADMIN)
    return console.redirect("/accounts")


@router.get("/security")
@page
async def security_page(request: Request) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity):
        return keyops.list_rotations(session, console.vault, identity=identity, ctx=console.ctx, limit=20)

    rotations = await console.run(work, roles=SECADMIN)
    return console.page("security.html", rotations=rotations, roles=STAFF_ROLES)


@router.post("/security/role")
@page
async def change_role(request: Request) -> Response:
    console = await open_console(request)
    aid = _account_id(field(console, "account_id"))
    role = field(console, "role")

    def work(session, identity: Identity) -> None:
        accounts.change_role(session, console.vault, identity=identity, ctx=console.ctx, account_id=aid, role=role)

    await console.run(work, roles=SECADMIN)
    return console.redirect("/security")


@router.post("/security/rotations")
@page
async def request_rotation(request: Request) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity) -> None:
        keyops.request_root_rotation(session, console.vault, identity=identity, ctx=console.ctx)

    await console.run(work, roles=SECADMIN)
    return console.redirect("/security")


@router.post("/security/rotations/{request_id}/approve")
@page
async def approve_rotation(request: Request, request_id: str) -> Response:
    console = await open_console(request)
    rid = _account_id(request_id)

    def work(session, identity: Identity) -> None:
        keyops.approve_root_rotation(session, console.vault, identity=identity, ctx=console.ctx, request_id=rid)

    await console.run(work, roles=SECADMIN)
    return console.redirect("/security")
