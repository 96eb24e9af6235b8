"""PI-1 / HD-1: the data inventory lists every stored column with a GB/T 39725 category and level."""

import json
from pathlib import Path

import vault
from audit.models import AuditBase
from consent.models import ConsentBase
from kms.keystore_tables import KeyStoreBase
from vault.db.models import Base

INVENTORY = json.loads((Path(vault.__file__).parent / "db" / "inventory.json").read_text())
CATEGORIES = {"personal_attributes", "health_status", "medical_application", "technical", "account"}


def _columns(metadata) -> set[str]:
    return {f"{table.name}.{column.name}" for table in metadata.tables.values() for column in table.columns}


def test_every_data_column_is_in_the_inventory_and_nothing_else():
    stored = _columns(Base.metadata) | _columns(AuditBase.metadata) | _columns(ConsentBase.metadata)
    assert stored == set(INVENTORY["data"])


def test_every_key_store_column_is_in_the_inventory_and_nothing_else():
    assert _columns(KeyStoreBase.metadata) == set(INVENTORY["keystore"])


def test_every_entry_has_a_category_level_protection_and_purpose():
    for section in ("data", "keystore"):
        for column, entry in INVENTORY[section].items():
            assert entry["category"] in CATEGORIES, column
            assert entry["level"] in (1, 2, 3, 4, 5), column
            assert entry["protection"] and entry["purpose"], column


def test_sensitive_columns_are_encrypted_or_blind_indexed():
    for column, entry in INVENTORY["data"].items():
        if entry["level"] >= 3 and entry["category"] in ("personal_attributes", "health_status"):
            assert column.endswith("_enc"), column
