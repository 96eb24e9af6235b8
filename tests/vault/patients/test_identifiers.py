import datetime as dt

import pytest

from tests.helpers import make_id_number
from vault.errors import InvalidIdNumber, InvalidPhone, InvalidUsername
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


def test_username_variants_collapse_to_one_name():
    assert {ids.normalize_username(v) for v in ("Alice", "alice", "Ａｌｉｃｅ", " ALICE ")} == {"alice"}


@pytest.mark.parametrize("raw", ["ab", "a" * 65, "has space", "-leading", "名字", ""])
def test_invalid_usernames(raw):
    with pytest.raises(InvalidUsername):
        ids.normalize_username(raw)
