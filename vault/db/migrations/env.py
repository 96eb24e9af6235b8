"""Alembic environment for the data database; the engine is handed in by vault.db.migrate (no alembic.ini)."""

from alembic import context

from audit.models import AuditBase
from consent.models import ConsentBase
from vault.db.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, render_as_batch=True,
                      target_metadata=[Base.metadata, AuditBase.metadata, ConsentBase.metadata])
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
