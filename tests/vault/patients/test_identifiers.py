import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import make_id_number, register
from vault.errors import InvalidIdNumber, InvalidPhone
from vault.patients import identifiers as ids


def test_known_valid_id_number_normalises_and_masks():
    assert ids.normalize_id_number("11010519491231002x") == "11010519491231002X"
    assert ids.normalize_id_number(" １１０１０５１９４９１２３１００２Ｘ ") == "11010519491231002X"
    assert ids.mask_id_number("11010519491231002X") == "110105********002X"
    assert ids.birth_date_from_id("11010519491231002X") == dt.date(1949, 12, 31)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("110105194912310021", "check-digit"),     # last digit wrong
        ("1101051949123100", "format"),            # too short
        ("11010519491231002Y", "format"),          # bad check character
        ("990105194912310028", "region"),          # no such province
        (make_id_number(birth="19990230"), "birth-date"),  # 30 February
        (make_id_number(birth="18000101"), "birth-date"),  # implausibly old
        (make_id_number(birth="20991231"), "birth-date"),  # in the future
    ],
)
def test_invalid_id_numbers_give_a_reason_code(value, reason):
    with pytest.raises(InvalidIdNumber) as caught:
        ids.normalize_id_number(value, today=dt.date(2026, 11, 25))
    assert caught.value.extra["reason"] == reason
    assert value not in str(caught.value)


def test_every_single_digit_change_is_caught_by_the_check_digit():
    valid = make_id_number()
    for position in range(14, 17):  # the sequence digits: the date stays plausible
        for digit in "0123456789":
            if digit == valid[position]:
                continue
            changed = valid[:position] + digit + valid[position + 1:]
            with pytest.raises(InvalidIdNumber):
                ids.normalize_id_number(changed)


@pytest.mark.parametrize("raw", ["13800138000", "+86 138 0013 8000", "0086-138-0013-8000", "8613800138000",
                                 "１３８００１３８０００"])
def test_phone_normalisation(raw):
    assert ids.normalize_phone(raw) == "13800138000"
    assert ids.mask_phone("13800138000") == "138****8000"


@pytest.mark.parametrize("raw", ["12800138000", "1380013800", "138001380001", "phone", "+1 415 555 0100", ""])
def test_invalid_phones(raw):
    with pytest.raises(InvalidPhone):
        ids.normalize_phone(raw)


# ---- one number, one meaning, whatever the script of its digits (issue 14 item 1) ------------------------------------

_DIGIT_SCRIPTS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "０１２３４５６７８９", "০১২৩৪৫৬৭৮৯",
                  "๐๑๒๓๔๕๖๗๘๙", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗"]


def _in_scripts(value: str, picks: list[int]) -> str:
    return "".join(_DIGIT_SCRIPTS[picks[i % len(picks)]][int(c)] if c.isascii() and c.isdigit() else c
                   for i, c in enumerate(value))


@settings(max_examples=300, deadline=None)
@given(birth=st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2020, 12, 31)),
       seq=st.integers(0, 999), picks=st.lists(st.integers(0, len(_DIGIT_SCRIPTS) - 1), min_size=1, max_size=18))
def test_an_id_number_in_any_digit_script_is_the_same_ascii_value(birth, seq, picks):
    canonical = make_id_number(birth=birth.strftime("%Y%m%d"), seq=f"{seq:03d}")
    assert ids.normalize_id_number(_in_scripts(canonical, picks)) == canonical


@settings(max_examples=300, deadline=None)
@given(rest=st.integers(0, 99_999_999), picks=st.lists(st.integers(0, len(_DIGIT_SCRIPTS) - 1), min_size=1))
def test_a_phone_number_in_any_digit_script_is_the_same_ascii_value(rest, picks):
    canonical = f"139{rest:08d}"
    assert ids.normalize_phone(_in_scripts(canonical, picks)) == canonical
    assert ids.normalize_phone("+86 " + _in_scripts(canonical, picks)) == canonical


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_is_an_ascii_identifier_or_a_clear_refusal(text):
    for normalize, error in ((ids.normalize_id_number, InvalidIdNumber), (ids.normalize_phone, InvalidPhone)):
        try:
            value = normalize(text)
        except error:
            continue
        assert value.isascii() and value.isalnum()


def test_a_second_registration_through_other_digits_is_refused(client):
    first = register(client, username="digits.one")
    body = {**{k: first[k] for k in ("password", "real_name", "phone", "consents")}, "username": "digits.two",
            "id_number": _in_scripts(first["id_number"], [1])}
    body["phone"] = "13900000000"
    response = client.post("/v1/patients/register", json=body)
    assert response.status_code == 409, response.text
