"""Hot statements (vault.db.fastpath.statements) against the ORM path, on SQLite and the real PostgreSQL: the same
values and types back, the session's transaction honoured, driver errors as SQLAlchemy errors without the bound
values."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import bindparam, exc, insert, select, update

from audit.models import ChainHead
from tests.helpers import login, png_bytes, register, upload
from vault.accounts import tokens
from vault.db.fastpath.statements import HotStatement
from vault.db.models import AuthToken, Consent, Record
from vault.patients import privacy
from vault.records import service as records


@pytest.fixture
def patient(client):
    person = register(client, username="hot.stmt")
    headers = login(client, "hot.stmt")
    record = upload(client, headers, png_bytes(b"hot"), title="hot title").json()
    return {**person, "headers": headers, "record_id": record["record_id"]}


def test_rows_match_the_orm_values_and_types(vault, patient):
    with vault.session() as session:
        token_row = session.scalars(select(AuthToken)).first()
        hot = tokens._LOOKUP.first(session, {"h": token_row.token_hash})
        assert (hot.expires_at, hot.created_at, hot.revoked_at) == (token_row.expires_at, token_row.created_at, None)
        assert hot.expires_at.tzinfo is not None and hot.expires_at.utcoffset() == dt.timedelta(0)
        assert hot.is_active is True and hot.role == "patient"

        record = session.get(Record, patient["record_id"])
        hot_record = records.get(session, record_id=patient["record_id"])
        for column in Record.__table__.columns:
            assert getattr(hot_record, column.name) == getattr(record, column.name), column.name
        assert hot_record.created_at.tzinfo is not None

        consents = session.scalars(select(Consent).where(Consent.patient_id == patient["patient_id"])
                                   .order_by(Consent.id.desc())).all()
        hot_consents = privacy._LATEST.rows(session, {"patient": patient["patient_id"]})
        assert [(c.item, c.given, c.notice_hash) for c in consents] == [tuple(r) for r in hot_consents]
        assert all(type(r.given) is bool for r in hot_consents)

        assert records.get(session, record_id="00000000-0000-0000-0000-000000000000") is None


def test_a_missing_parameter_is_refused_not_sent_as_null(vault):
    with vault.session() as session, pytest.raises(exc.ArgumentError, match="missing parameters"):
        tokens._LOOKUP.first(session, {})


def test_statements_run_inside_the_session_transaction(vault):
    move = HotStatement(update(ChainHead).where(ChainHead.chain_id == bindparam("c")).values(hash=bindparam("h")))
    read = HotStatement(select(ChainHead.hash).where(ChainHead.chain_id == bindparam("c")))
    with vault.session() as session:
        before = read.first(session, {"c": 0}).hash
        move.execute(session, {"c": 0, "h": "f" * 64})
        assert read.first(session, {"c": 0}).hash == "f" * 64
        session.rollback()
        assert read.first(session, {"c": 0}).hash == before
        move.execute(session, {"c": 0, "h": "e" * 64})
        session.commit()
    with vault.session() as session:
        assert session.get(ChainHead, 0).hash == "e" * 64


def test_driver_errors_are_sqlalchemy_errors_without_the_values(vault):
    duplicate = HotStatement(insert(ChainHead).values(chain_id=bindparam("c"), seq=bindparam("s"),
                                                      hash=bindparam("h"), integrated_seq=bindparam("i")))
    secret = "SECRET-VALUE-" + "9" * 51
    with vault.session() as session:
        with pytest.raises(exc.IntegrityError) as caught:
            duplicate.execute(session, {"c": 0, "s": 5, "h": secret, "i": -1})
        assert secret not in str(caught.value) and secret not in repr(caught.value.params)
        session.rollback()


def test_the_connection_is_asked_of_the_session_again_after_each_transaction(vault):
    from vault.db.fastpath import statements

    with vault.session() as session:
        first = statements._connection(session)
        assert statements._connection(session) is first is session.connection()
        session.commit()
        second = statements._connection(session)
        assert second is session.connection() and second is not first  # a new transaction, a new Connection
        session.rollback()
        assert statements._connection(session) is session.connection()
    with vault.session() as other:
        assert statements._connection(other) is other.connection()


_NEW_HEAD = insert(ChainHead).values(chain_id=bindparam("c"), seq=-1, hash="0" * 64, integrated_seq=-1)


def _heads_between(vault, low: int, high: int) -> list[int]:
    with vault.session() as session:
        return sorted(session.scalars(select(ChainHead.chain_id).where(ChainHead.chain_id.between(low, high))))


def test_savepoints_behave_as_on_the_orm_path(vault):
    """Rows 1..3 with a rolled-back savepoint around row 2: the hot path keeps what the ORM path keeps."""
    hot = HotStatement(_NEW_HEAD)
    paths = {900: lambda session, c: hot.execute(session, {"c": c}),
             910: lambda session, c: session.execute(_NEW_HEAD, {"c": c})}
    for base, run in paths.items():
        with vault.session() as session:
            run(session, base + 1)
            nested = session.begin_nested()
            run(session, base + 2)
            nested.rollback()
            run(session, base + 3)
            session.commit()
    assert [c - 900 for c in _heads_between(vault, 901, 903)] == [c - 910 for c in _heads_between(vault, 911, 913)]


def test_a_failed_flush_stops_hot_statements_until_rollback(vault):
    read = HotStatement(select(ChainHead.hash).where(ChainHead.chain_id == bindparam("c")))
    with vault.session() as session:
        assert read.first(session, {"c": 0}) is not None  # the connection is cached for this transaction
        session.add(ChainHead(chain_id=0, seq=-1, hash="0" * 64, integrated_seq=-1))  # duplicate key
        with pytest.raises(exc.IntegrityError):
            session.flush()
        with pytest.raises(exc.PendingRollbackError):
            read.first(session, {"c": 0})
        session.rollback()
        assert read.first(session, {"c": 0}) is not None


def test_scan_stops_fetching_when_told(vault, patient):
    seen = []
    with vault.session() as session:
        privacy._LATEST.scan(session, {"patient": patient["patient_id"]}, lambda row: seen.append(row) or True)
        everything = privacy._LATEST.rows(session, {"patient": patient["patient_id"]})
    assert len(everything) > 1 and seen == everything[:1]
