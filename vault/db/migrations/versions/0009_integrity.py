"""Integrity at rest of what authorisation reads (issue 14 item 9, INT-1): a record's sealed category, the integrity
tags of grants and break-glass claims; existing rows are sealed here.

Sealing needs keys: `vault.db.migrate(engine, keys=..., suite=...)` hands the vault's KeyManager in (open_vault does).
Without them the revision still runs on a database that has nothing to seal (a new vault, a test schema) and refuses
clearly otherwise. A record whose DEK cannot be opened (its patient erased, a damaged wrap) is left unsealed: it reads
as an integrity failure, the fail-closed answer. The integrity service key created here is reported back
(`config.attributes["service_keys_created"]`) so the runtime audits its creation.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 500


def _keys():
    attributes = context.config.attributes
    keys, suite = attributes.get("keys"), attributes.get("suite")
    if keys is None or suite is None:
        raise RuntimeError("revision 0009 seals existing records, grants and break-glass claims and needs the vault's "
                           "keys: run it by opening the vault (healthvault serve / any command), not bare alembic")
    return attributes, keys, suite


def _integrity_key(attributes, keys, suite) -> bytes:
    from consent import integrity
    from kms import suites

    purpose = suites.purpose(integrity.PURPOSE, suite)
    store = attributes.get("keystore")
    existed = store is not None and store.newest_service_key(purpose) is not None
    key = keys.service_key(purpose)
    if not existed:
        attributes.setdefault("service_keys_created", []).append(purpose)
    return key


def _seal_records(bind, keys) -> None:
    from kms import CryptoError, envelope

    records = sa.table("records", sa.column("id"), sa.column("patient_id"), sa.column("category"),
                       sa.column("label"), sa.column("wrapped_dek"), sa.column("label_enc"),
                       sa.column("category_enc"))
    patients = sa.table("patients", sa.column("id"), sa.column("erased_at"))
    last = ""
    while True:
        rows = bind.execute(
            sa.select(records.c.id, records.c.patient_id, records.c.category, records.c.label, records.c.wrapped_dek,
                      records.c.label_enc)
            .join(patients, patients.c.id == records.c.patient_id)
            .where(records.c.category_enc.is_(None), patients.c.erased_at.is_(None), records.c.id > last)
            .order_by(records.c.id).limit(BATCH)).all()
        if not rows:
            return
        for row in rows:
            last = row.id
            try:
                dek = keys.open_data_key(row.patient_id, row.wrapped_dek)
            except CryptoError:
                continue  # unreadable anyway: stays unsealed, which reads as an integrity failure

            def seal(value: str, column: str, row=row, dek=dek) -> bytes:
                aad = envelope.field_aad(table="records", column=column, row_id=row.id, patient_id=row.patient_id)
                return envelope.encrypt(dek, value.encode(), aad)

            values = {"category_enc": seal(row.category, "category")}
            if row.label_enc is None:
                values["label_enc"] = seal(row.label, "label")
            bind.execute(records.update().where(records.c.id == row.id).values(**values))


def _seal_grants_and_claims(bind, key: bytes, suite: int) -> None:
    from types import SimpleNamespace

    from audit.models import UTCDateTime
    from consent import integrity

    grants = sa.table("grants", sa.column("id"), sa.column("patient_id"), sa.column("grantee_id"),
                      sa.column("record_ids"), sa.column("categories"), sa.column("include_future", sa.Boolean()),
                      sa.column("actions"), sa.column("not_before", UTCDateTime()),
                      sa.column("expires_at", UTCDateTime()), sa.column("revoked_at", UTCDateTime()),
                      sa.column("integrity_mac"))
    for row in bind.execute(sa.select(grants).where(grants.c.integrity_mac.is_(None))).all():
        grant = SimpleNamespace(**row._mapping)
        mac = integrity.seal(key, integrity.grant_message(grant, revoked_at=grant.revoked_at), suite=suite)
        bind.execute(grants.update().where(grants.c.id == row.id).values(integrity_mac=mac))
    claims = sa.table("breakglass", sa.column("id"), sa.column("doctor_id"), sa.column("patient_id"),
                      sa.column("created_at", UTCDateTime()), sa.column("expires_at", UTCDateTime()),
                      sa.column("integrity_mac"))
    for row in bind.execute(sa.select(claims).where(claims.c.integrity_mac.is_(None))).all():
        message = integrity.breakglass_message(claim_id=row.id, doctor_id=row.doctor_id, patient_id=row.patient_id,
                                               created_at=row.created_at, expires_at=row.expires_at)
        bind.execute(claims.update().where(claims.c.id == row.id)
                     .values(integrity_mac=integrity.seal(key, message, suite=suite)))


def upgrade() -> None:
    bind = op.get_bind()
    count = lambda table: int(bind.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar() or 0)  # noqa: S608
    has_records, has_sources = count("records") > 0, count("grants") + count("breakglass") > 0
    keys = _keys() if has_records or has_sources else None  # refuses before any change
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("category_enc", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("integrity_mac", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("breakglass") as batch:
        batch.add_column(sa.Column("integrity_mac", sa.LargeBinary(), nullable=True))
    if keys is None:
        return
    attributes, manager, suite = keys
    if has_records:
        _seal_records(bind, manager)
    if has_sources:
        _seal_grants_and_claims(bind, _integrity_key(attributes, manager, suite), suite)


def downgrade() -> None:
    raise RuntimeError("integrity tags are not dropped by a downgrade: without them every grant reads as tampered")
