"""Alembic environment for the key store only: its own history, its own version table, never vault's.

Run programmatically by KeyStore.migrate(), which passes the connection, the schema (PostgreSQL) and the version
table through `config.attributes`; there is no alembic.ini and no logging configuration here.
"""

from alembic import context

from kms.keystore_tables import KeyStoreBase

config = context.config
connection = config.attributes["connection"]
schema = config.attributes.get("schema")

context.configure(
    connection=connection,
    target_metadata=KeyStoreBase.metadata,
    version_table=config.attributes.get("version_table", "kms_alembic_version"),
    version_table_schema=schema,
    include_schemas=schema is not None,
)

with context.begin_transaction():
    context.run_migrations()
