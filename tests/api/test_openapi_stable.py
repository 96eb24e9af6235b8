"""The HTTP contract stays put: the OpenAPI document equals the committed snapshot apart from prose.

`openapi_snapshot.json` was generated from the code before api/schemas.py gave way to the domain's view types
(issue 13, item 4). Descriptions and titles are prose and may change; paths, methods, parameters, status codes,
component names, field names, types, formats, constraints, defaults and which fields are required may not. To
accept a deliberate change of the contract, regenerate with `HEALTHVAULT_WRITE_OPENAPI_SNAPSHOT=1` and review the
diff.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest

SNAPSHOT = pathlib.Path(__file__).with_name("openapi_snapshot.json")
PROSE = frozenset({"description", "title"})


def without_prose(node: Any) -> Any:
    """The document with every description and title dropped (a *property* named `title` or `description` stays:
    its value is a schema object, not a string)."""
    if isinstance(node, dict):
        return {key: without_prose(value) for key, value in node.items()
                if not (key in PROSE and isinstance(value, str))}
    if isinstance(node, list):
        return [without_prose(item) for item in node]
    return node


def test_openapi_document_matches_the_snapshot_apart_from_prose(app) -> None:
    document = without_prose(app.openapi())
    if os.environ.get("HEALTHVAULT_WRITE_OPENAPI_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    # Compare as sorted JSON text so that a failure shows a readable diff of where the contract moved.
    assert json.dumps(document, indent=1, sort_keys=True) == json.dumps(expected, indent=1, sort_keys=True)


@pytest.mark.parametrize("key", sorted(PROSE))
def test_prose_stripping_keeps_properties_of_that_name(key: str) -> None:
    schema = {key: "words", "properties": {key: {"type": "string", key: "Words"}}}
    assert without_prose(schema) == {"properties": {key: {"type": "string"}}}


def test_a_changed_field_is_seen() -> None:
    before = {"components": {"schemas": {"X": {"properties": {"a": {"type": "string"}}, "required": ["a"]}}}}
    after = {"components": {"schemas": {"X": {"properties": {"a": {"type": "string"}}, "required": []}}}}
    assert without_prose(before) != without_prose(after)
