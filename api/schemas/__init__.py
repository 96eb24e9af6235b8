"""The HTTP contract's types, one module per router: request bodies (input validation) and API-only envelopes.

Owns only what exists at the edge. Views are defined once, in the domain (`vault/<domain>`), as dataclasses; the
API serialises them through subclasses that add no field and exist to keep the component names the OpenAPI
document has always had (`RecordOut` is `records.RecordView` under its contract name). A field added to a view
appears in the API without a change here. Every input model forbids unknown fields (IP-1, PI-1).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Annotated, Any, TypeVar, get_type_hints

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, TypeAdapter

from vault import text

T = TypeVar("T")


class Input(BaseModel):
    """Base of every request body: unknown fields are refused, strings are bounded."""

    model_config = ConfigDict(extra="forbid", str_max_length=256)


# Every time a client sends (bodies and query parameters): with an offset, within vault.text's range, in UTC.
Instant = Annotated[AwareDatetime, AfterValidator(text.utc_instant)]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@functools.cache
def _shape(cls: type[Any]) -> tuple[tuple[str, ...], dict[str, TypeAdapter[Any]]]:
    """The field names of `cls`, and the fields it declares again (only to name a nested view's contract type), each
    with its validator."""
    hints = get_type_hints(cls)
    narrowed = {name: TypeAdapter(hints[name]) for name in inspect.get_annotations(cls)}
    return tuple(field.name for field in dataclasses.fields(cls)), narrowed


def contract(cls: type[T], view: Any) -> T:
    """The domain `view` as its contract type `cls`, a subclass of the view's type that adds no field.

    Plain fields are passed through as they are (no copy, no validation: FastAPI serialises them against the
    response model); only the fields `cls` narrows to a nested contract type are converted."""
    klass: Any = cls  # a dataclass type (mypy cannot bound a TypeVar to "some dataclass")
    names, narrowed = _shape(klass)
    values = {name: getattr(view, name) for name in names}
    for name, adapter in narrowed.items():
        values[name] = adapter.validate_python(_plain(values[name]))
    return cls(**values)
