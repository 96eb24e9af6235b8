"""Issue 14 item 2: every time a client sends carries an offset and lies in range (vault.text's times, and `Instant`,
the pydantic type every API body and query parameter uses). Properties over every datetime and every string."""

from __future__ import annotations

import datetime as dt

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.schemas import Instant
from vault import text
from vault.errors import InvalidInput

INSTANT = pydantic.TypeAdapter(Instant)
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)
WINDOW = dt.timedelta(days=20 * 366)  # longer than any window the vault adds (grants: days; retention: years)
offsets = st.builds(lambda m: dt.timezone(dt.timedelta(minutes=m)), st.integers(min_value=-1439, max_value=1439))


def _accepted(value: dt.datetime) -> None:
    assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)
    assert text.EARLIEST <= value <= text.LATEST
    value + WINDOW, value - WINDOW


@given(value=st.datetimes(timezones=st.none() | st.just(dt.UTC) | offsets))
@PROPERTY
def test_any_datetime_is_accepted_in_utc_or_refused_as_a_validation_error(value):
    try:
        parsed = INSTANT.validate_python(value)
    except pydantic.ValidationError:
        reason = text.instant_problem(value)
        assert reason is not None
        with pytest.raises(InvalidInput):
            text.checked_instant(value, field="since")
        return
    _accepted(parsed)
    assert value.tzinfo is not None and parsed == value  # the same instant, only in UTC
    assert text.checked_instant(value, field="since") == parsed


@given(value=st.datetimes(timezones=st.none() | st.just(dt.UTC) | offsets), z=st.booleans())
@PROPERTY
def test_iso_strings_parse_only_with_an_offset(value, z):
    iso = value.isoformat()
    if z and value.tzinfo is dt.UTC:
        iso = iso.replace("+00:00", "Z")
    try:
        parsed = INSTANT.validate_json(f'"{iso}"')
    except pydantic.ValidationError:
        assert value.tzinfo is None or text.instant_problem(value) is not None
        return
    assert value.tzinfo is not None
    _accepted(parsed)


ISO_LIKE = r"\A[0-9]{1,6}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,15}(Z|[+-][0-9:]{0,6})?\Z"


@given(string=st.text(max_size=40) | st.from_regex(ISO_LIKE))
@PROPERTY
def test_any_string_is_a_validation_error_or_an_instant(string):
    try:
        parsed = INSTANT.validate_python(string)
    except pydantic.ValidationError:
        return
    _accepted(parsed)


@given(number=st.integers() | st.floats(allow_nan=True, allow_infinity=True))
@PROPERTY
def test_any_number_is_a_validation_error_or_an_instant(number):
    try:
        parsed = INSTANT.validate_python(number)
    except pydantic.ValidationError:
        return
    _accepted(parsed)


@pytest.mark.parametrize("iso", ["2026-01-31T08:00:00", "0000-01-01T00:00:00Z", "10000-01-01T00:00:00Z",
                                  "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "9999-12-31T00:00:00Z",
                                  "1899-12-31T23:59:59Z", "2026-02-30T00:00:00Z", "2026-01-31T08:00:00+25:00"])
def test_named_edges_are_refused(iso):
    with pytest.raises(pydantic.ValidationError):
        INSTANT.validate_python(iso)


@pytest.mark.parametrize(("iso", "utc"), [
    ("2026-01-31T08:00:00+08:00", dt.datetime(2026, 1, 31, 0, 0, tzinfo=dt.UTC)),
    ("2026-01-31T00:00:00Z", dt.datetime(2026, 1, 31, 0, 0, tzinfo=dt.UTC)),
    ("1900-01-01T00:00:00Z", text.EARLIEST),
])
def test_times_with_an_offset_are_kept_as_the_same_instant(iso, utc):
    parsed = INSTANT.validate_python(iso)
    assert parsed == utc and parsed.tzinfo == dt.UTC
