"""The database lane (api/lanes.py): on SQLite one thread and one kept connection for every hot read, a failed
read's open transaction never leaks into the next one; on PostgreSQL the shared pool and pooled sessions."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from sqlalchemy import bindparam, select, update

from api.lanes import DatabaseLane
from audit.models import ChainHead

from tests.conftest import require_pg
from tests.helpers import login, png_bytes, register, upload

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen")


def _dbapi(session):
    return session.connection().connection.dbapi_connection


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_lane_runs_on_one_thread_with_one_kept_connection(vault):
    lane = DatabaseLane(vault, single_thread=True)

    def where() -> tuple[int, object, str]:
        with lane.session() as session:
            return threading.get_ident(), _dbapi(session), _seen.get(None)

    async def main():
        _seen.set("from the request")
        return await asyncio.gather(*(lane.run(where) for _ in range(20)))

    try:
        results = asyncio.run(main())
        assert len({ident for ident, _, _ in results}) == 1 and results[0][0] != threading.get_ident()
        assert len({id(conn) for _, conn, _ in results}) == 1
        assert {seen for _, _, seen in results} == {"from the request"}

        async def failing():
            return await lane.run(lambda: 1 / 0)

        with pytest.raises(ZeroDivisionError):
            asyncio.run(failing())
    finally:
        lane.close()
    assert lane._connection is None
    # An app that is started again (a second lifespan) gets a fresh lane thread and connection.
    try:
        again = asyncio.run(lane.run(where))
        assert again[0] != threading.get_ident() and again[2] is None and lane._connection is not None
    finally:
        lane.close()
    assert lane._connection is None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_transaction_a_failed_read_left_open_is_rolled_back(vault):
    lane = DatabaseLane(vault, single_thread=True)
    move = update(ChainHead).where(ChainHead.chain_id == bindparam("c")).values(hash=bindparam("h"))

    def leave_open() -> str:
        session = lane.session()  # never closed: as if the request died between statements
        before = session.scalar(select(ChainHead.hash).where(ChainHead.chain_id == 0))
        session.execute(move, {"c": 0, "h": "a" * 64})
        return before

    def read_head() -> str:
        with lane.session() as session:
            return session.scalar(select(ChainHead.hash).where(ChainHead.chain_id == 0))

    try:
        before = asyncio.run(lane.run(leave_open))
        assert asyncio.run(lane.run(read_head)) == before
    finally:
        lane.close()
    with vault.session() as session:
        assert session.get(ChainHead, 0).hash == before


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_transaction_only_the_driver_knows_about_is_rolled_back(vault):
    """A COMMIT SQLite refused leaves the driver in a transaction SQLAlchemy has forgotten: the next read must not
    commit the failed request's writes, nor keep the write lock."""
    lane = DatabaseLane(vault, single_thread=True)

    def read_head() -> str:
        with lane.session() as session:
            return session.scalar(select(ChainHead.hash).where(ChainHead.chain_id == 0))

    def write_behind_sqlalchemys_back() -> bool:
        driver = lane._connection.connection.dbapi_connection
        driver.execute("UPDATE audit_chain_heads SET hash = ? WHERE chain_id = 0", ("b" * 64,))
        return driver.in_transaction and not lane._connection.in_transaction()

    try:
        before = asyncio.run(lane.run(read_head))
        assert asyncio.run(lane.run(write_behind_sqlalchemys_back))
        assert asyncio.run(lane.run(read_head)) == before

        def driver_idle() -> bool:
            with lane.session() as session:
                session.connection()
            return not lane._connection.connection.dbapi_connection.in_transaction

        assert asyncio.run(lane.run(driver_idle))
    finally:
        lane.close()
    with vault.session() as session:
        assert session.get(ChainHead, 0).hash == before


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_reads_use_the_pool(backend, request):
    require_pg()
    vault = request.getfixturevalue("vault")
    lane = DatabaseLane(vault, single_thread=False)

    def bound() -> object:
        with lane.session() as session:
            return session.get_bind()

    assert asyncio.run(lane.run(bound)) is vault.engine
    lane.close()


def test_reads_through_the_app_use_the_lane_and_stay_audited(client, vault, app):
    person = register(client, username="lane.user")
    headers = login(client, "lane.user")
    record_id = upload(client, headers, png_bytes(b"lane"), title="lane").json()["record_id"]
    for _ in range(3):
        assert client.get(f"/v1/records/{record_id}", headers=headers).status_code == 200
    assert client.get("/v1/records", headers=headers).status_code == 200
    assert client.get(f"/v1/records/{record_id}/content", headers=headers).content == png_bytes(b"lane")
    lane = app.state.db_lane
    assert (lane._connection is not None) == vault.settings.is_sqlite
    log = client.get("/v1/patients/me/access-log", headers=headers).json()["items"]
    assert sum(e["action"] == "record.read" for e in log) == 3
    assert person["patient_id"]
