"""The HTTP contract's types, one module per router: request bodies (input validation) and API-only envelopes.

Owns only what exists at the edge. Views are defined once, in the domain (`vault/<domain>`), as dataclasses; the
API serialises them through subclasses that add no field and exist to keep the component names the OpenAPI
document has always had (`RecordOut` is `records.RecordView` under its contract name). A field added to a view
appears in the API without a change here. Every input model forbids unknown fields (IP-1, PI-1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter

T = TypeVar("T")


class Input(BaseModel):
    """Base of every request body: unknown fields are refused, strings are bounded."""

    model_config = ConfigDict(extra="forbid", str_max_length=256)


@functools.cache
def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def contract(cls: type[T], view: Any) -> T:
    """The domain `view` as its contract type `cls` (a field-less subclass of the view's type, nested views too)."""
    return _adapter(cls).validate_python(dataclasses.asdict(view))
