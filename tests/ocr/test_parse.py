"""Parsing and normalisation units (no OCR)."""
from __future__ import annotations

import pytest

from ocr.analytes import lookup_abbr, lookup_name
from ocr.layout import split_keywords, split_name_code
from ocr.parse import canon_unit, derive_flag, norm_date, parse_range, qual_level, split_value_flag


@pytest.mark.parametrize("printed,canon", [
    ("umo1/L", "μmol/L"), ("10~9/L", "10^9/L"), ("×10^9/L", "10^9/L"), ("x10*9/L", "10^9/L"), ("10⁹/L", "10^9/L"),
    ("umol/L", "μmol/L"), ("µmol/L", "μmol/L"), ("fl", "fL"), ("个/μL", "/μL"), ("/ul", "/μL"), ("mmoI/L", "mmol/L"),
    ("U/L", "U/L"), ("g/l", "g/L"), ("10^12/L", "10^12/L"), ("%", "%"),
])
def test_units(printed, canon):
    assert canon_unit(printed) == canon


@pytest.mark.parametrize("text,expected", [
    ("3.5-9.5", (3.5, 9.5, "range")), ("3.5--9.5", (3.5, 9.5, "range")), ("3.5～9.5", (3.5, 9.5, "range")),
    ("3.5~9.5", (3.5, 9.5, "range")), ("<5.20", (None, 5.2, "lt")), ("＜5.20", (None, 5.2, "lt")),
    ("≤5.20", (None, 5.2, "lt")), (">1.04", (1.04, None, "gt")), ("≥1.04", (1.04, None, "gt")),
    ("阴性", (None, None, "qual")), ("阴性(-)", (None, None, "qual")), ("-", (None, None, "qual")),
])
def test_ranges(text, expected):
    assert parse_range(text) == expected


def test_values_flags_and_levels():
    assert split_value_flag("6.52↑") == ("6.52", "H")
    assert split_value_flag("183H") == ("183", "H")
    assert split_value_flag("2.1↓") == ("2.1", "L")
    assert qual_level("阳性(++)") == qual_level("++") == qual_level("2+") == "2+"
    assert qual_level("弱阳性") == qual_level("±") == "trace"
    assert qual_level("阴性(-)") == qual_level("-") == "neg"
    assert derive_flag("11.32", 3.5, 9.5, "range") == "H"
    assert derive_flag("4.08", None, 5.2, "lt") is None
    assert derive_flag("0.92", 1.04, None, "gt") == "L"
    assert derive_flag("阳性(+)", None, None, "qual") == "H"
    assert derive_flag("阴性", None, None, "qual") is None


def test_dates():
    assert norm_date("2024/03/15 08:32") == "2024-03-15 08:32"
    assert norm_date("2024年03月15日 08:32") == "2024-03-15 08:32"
    assert norm_date("2024-03-15 08:32:10") == "2024-03-15 08:32"


def test_dictionary_and_ocr_slips():
    assert lookup_abbr("M0%").code == "MONO%"
    assert lookup_abbr("Y-GT").code == "GGT"
    assert lookup_abbr("GPT").code == "ALT"
    assert lookup_abbr("Cr").code == "CREA"
    assert lookup_name("谷丙转氨酶")[0].code == "ALT"
    assert lookup_name("中性粒细胞百分比")[0].loinc == "770-8"
    assert lookup_name("中性粒细胞形态学")[0] is None
    assert lookup_name("脂蛋白")[0] is None  # short names: exact only (白蛋白 is one char away)


def test_header_keywords_fuzzy_and_merged():
    assert [r for r, _, _ in split_keywords("測定值")] == ["result"]
    assert [r for r, _, _ in split_keywords("异常单位")] == ["flag", "unit"]
    assert [r for r, _, _ in split_keywords("检验结果 标志 参考区间")] == ["result", "flag", "ref"]
    assert split_keywords("白细胞计数") is None


def test_name_code_cell():
    assert split_name_code("白细胞计数(WBC)") == ("白细胞计数", "WBC")
    assert split_name_code("钾(K)") == ("钾", "K")
    assert split_name_code("脂蛋白(a)") == ("脂蛋白(a)", None)
