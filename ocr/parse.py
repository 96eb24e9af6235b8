"""Parsing and normalisation of cell text: values, qualitative levels, units, reference ranges, flags, header."""
from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation


def nfkc(s: str | None) -> str:
    s = unicodedata.normalize("NFKC", (s or "").replace("µ", "μ"))
    return s.replace("µ", "μ")


# ----------------------------------------------------------------------------- numbers / values
NUM_RE = re.compile(r"^[<>≤≥]?-?\d+(?:\.\d+)?$")
_FLAG_GLYPHS = "↑↓"


def parse_number(s: str) -> float | None:
    s = nfkc(s).strip().lstrip("<>≤≥")
    try:
        return float(Decimal(s))
    except (InvalidOperation, ValueError):
        return None


QUAL_LEVELS = [
    (re.compile(r"^(阴性|阴性\(-\)|-|—|neg|negative|\(-\)|阴)$", re.I), "neg"),
    (re.compile(r"^(±|\+-|弱阳性|弱阳性\(±\)|弱阳性\(\+-\)|trace|微量)$", re.I), "trace"),
]


def qual_level(s: str) -> str | None:
    s = re.sub(r"\s+", "", nfkc(s))
    for rx, lvl in QUAL_LEVELS:
        if rx.match(s):
            return lvl
    m = re.match(r"^(?:阳性)?\(?(\+{1,4})\)?$", s)
    if m:
        return f"{len(m.group(1))}+"
    m = re.match(r"^(?:阳性)?\(?([1-4])\+\)?$", s)
    if m:
        return f"{m.group(1)}+"
    if s in ("阳性", "pos", "POS", "positive"):
        return "pos"
    return None


def split_value_flag(s: str) -> tuple[str, str | None]:
    """'6.52↑' -> ('6.52', 'H'); '183H' -> ('183', 'H'); '阳性(+)' -> ('阳性(+)', None)."""
    t = nfkc(s).strip().replace(" ", "")
    flag = None
    if t.endswith("↑") or t.startswith("↑"):
        flag, t = "H", t.strip("↑")
    elif t.endswith("↓") or t.startswith("↓"):
        flag, t = "L", t.strip("↓")
    m = re.match(r"^([<>≤≥]?-?\d+(?:\.\d+)?)\s*([HL])$", t)
    if m:
        t, flag = m.group(1), m.group(2)
    return t, flag


def repair_number(s: str) -> str:
    """Common OCR slips inside numbers: O->0, l/I->1, ',' decimal, stray spaces."""
    t = nfkc(s).strip()
    if re.fullmatch(r"[<>≤≥]?[\dOoIl.,]+", t) and re.search(r"\d", t):
        t = t.replace("O", "0").replace("o", "0").replace("I", "1").replace("l", "1")
        if t.count(",") == 1 and "." not in t:
            t = t.replace(",", ".")
    return t


def classify_value(s: str) -> str | None:
    """'num' | 'qual' | None."""
    t, _ = split_value_flag(s)
    if NUM_RE.match(repair_number(t)):
        return "num"
    if qual_level(t):
        return "qual"
    return None


# ----------------------------------------------------------------------------- flags
def parse_flag(s: str) -> str | None:
    t = nfkc(s).strip()
    if t in ("↑", "H", "h", "高", "偏高", "↑↑", "HH", "▲", "+↑"):
        return "H"
    if t in ("↓", "L", "l", "低", "偏低", "↓↓", "LL", "▼"):
        return "L"
    return None


# ----------------------------------------------------------------------------- units
CANON_UNITS = ["10^9/L", "10^12/L", "g/L", "%", "fL", "pg", "U/L", "μmol/L", "mmol/L", "mg/L", "/μL",
               "mg/dL", "ng/mL", "pg/mL", "μg/L", "IU/L", "mIU/L", "s", "L/L", "/HP", "/LP", "g/dL", "nmol/L",
               "pmol/L", "μIU/mL", "mU/L", "mL/min"]
_UNIT_KEYS = {}


def _ukey(u: str) -> str:
    return re.sub(r"[\s]", "", u).lower()


for _u in CANON_UNITS:
    _UNIT_KEYS[_ukey(_u)] = _u


def canon_unit(s: str | None) -> str | None:
    """Canonical unit, with OCR repairs (`umo1/L`->`μmol/L`, `10~9/L`->`10^9/L`); None when not a unit."""
    if s is None:
        return None
    t = nfkc(s).strip().replace(" ", "")
    if not t:
        return None
    t = t.replace("µ", "μ").replace("％", "%")
    # exponent forms: ×10^9/L, x10*9/L, 10~9/L, 10E9/L, 10⁹/L (NFKC turns ⁹ into 9)
    m = re.match(r"^[×xX*]?\s*10\s*[\^~*eE\-'’`]?\s*(9|12)\s*/\s*[lL1I]$", t)
    if m:
        return f"10^{m.group(1)}/L"
    k = t.lower()
    k = k.replace("1/l", "l/l") if k.startswith("1/") is False else k
    # letter slips inside unit words: 1/l/I for l, 0 for o, u for μ
    k2 = (k.replace("umo1", "umol").replace("mo1", "mol").replace("m0l", "mol").replace(" umol", "umol")
          .replace("µ", "u").replace("μ", "u"))
    k2 = re.sub(r"/[1i|]$", "/l", k2)
    k2 = re.sub(r"[1i|]$", "l", k2) if k2.endswith(("mo1", "moi")) else k2
    k2 = k2.replace("个/", "/")
    table = {"10^9/l": "10^9/L", "10^12/l": "10^12/L", "g/l": "g/L", "%": "%", "fl": "fL", "pg": "pg",
             "u/l": "U/L", "iu/l": "IU/L", "umol/l": "μmol/L", "mmol/l": "mmol/L", "mg/l": "mg/L", "/ul": "/μL",
             "mg/dl": "mg/dL", "ng/ml": "ng/mL", "pg/ml": "pg/mL", "ug/l": "μg/L", "miu/l": "mIU/L",
             "nmol/l": "nmol/L", "pmol/l": "pmol/L", "l/l": "L/L", "/hp": "/HP", "/lp": "/LP", "g/dl": "g/dL",
             "uiu/ml": "μIU/mL", "s": "s", "ml/min": "mL/min", "u1/l": "U/L", "umol/1": "μmol/L",
             "mmol/1": "mmol/L", "mm0l/l": "mmol/L", "um0l/l": "μmol/L", "ul/l": "U/L", "/hpf": "/HP"}
    if k2 in table:
        return table[k2]
    # one more round of slips: l<->1<->i anywhere after the slash
    k3 = re.sub(r"(?<=/)[1i|]", "l", k2)
    k3 = re.sub(r"mo[1i|]", "mol", k3)
    return table.get(k3)


def looks_like_unit(s: str) -> bool:
    return canon_unit(s) is not None


# ----------------------------------------------------------------------------- reference ranges
_SEP = r"(?:--|-|~|～|〜|—|–|－|至)"
RANGE_RE = re.compile(rf"^(-?\d+(?:\.\d+)?)\s*{_SEP}\s*(-?\d+(?:\.\d+)?)$")
LT_RE = re.compile(r"^(<|＜|≤|<=|﹤)\s*(\d+(?:\.\d+)?)$")
GT_RE = re.compile(r"^(>|＞|≥|>=|﹥)\s*(\d+(?:\.\d+)?)$")


def parse_range(s: str | None) -> tuple[float | None, float | None, str | None] | None:
    """(low, high, kind) where kind is 'range'|'lt'|'gt'|'qual'; None when the text is not a reference."""
    if s is None:
        return None
    t = nfkc(s).strip().replace(" ", "")
    t = t.replace("～", "~").replace("〜", "~")
    if len(t) > 2 and t[0] in "([" and t[-1] in ")]":
        t = t[1:-1]
    if not t:
        return None
    t2 = repair_number(t) if re.fullmatch(r"[\dOoIl.,~\-]+", t) else t
    m = RANGE_RE.match(t2)
    if m:
        return float(m.group(1)), float(m.group(2)), "range"
    m = LT_RE.match(t)
    if m:
        return None, float(m.group(2)), "lt"
    m = GT_RE.match(t)
    if m:
        return float(m.group(2)), None, "gt"
    if qual_level(t) in ("neg", "trace") or t in ("阴性", "阴性(-)", "-", "正常", "无"):
        return None, None, "qual"
    return None


def looks_like_range(s: str) -> bool:
    r = parse_range(s)
    return r is not None and r[2] != "qual"


# ----------------------------------------------------------------------------- derived flag
def derive_flag(value: str | None, low: float | None, high: float | None, ref_kind: str | None) -> str | None:
    """H / L / None from value vs reference; positive qualitative vs negative reference -> H."""
    if value is None:
        return None
    q = qual_level(value)
    if q is not None:
        if ref_kind == "qual":
            return "H" if q not in ("neg",) else None
        return None
    x = parse_number(value)
    if x is None:
        return None
    v = nfkc(value).strip()
    if high is not None and x > high and not v.startswith("<"):
        return "H"
    if low is not None and x < low and not v.startswith(">"):
        return "L"
    return None


# ----------------------------------------------------------------------------- header
def norm_date(s: str) -> str | None:
    t = nfkc(s)
    m = re.search(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?\s*(?:(\d{1,2})\s*[:：时]\s*(\d{2}))?", t)
    if not m:
        m2 = re.search(r"(\d{4})(\d{2})(\d{2})\s*(\d{2}):?(\d{2})", t)
        if not m2:
            return None
        m = m2
    y, mo, d, hh, mm = m.groups()
    out = f"{y}-{int(mo):02d}-{int(d):02d}"
    if hh is not None:
        out += f" {int(hh):02d}:{mm}"
    return out


def norm_sex(s: str) -> str | None:
    t = nfkc(s).strip()
    if "男" in t or t.upper() in ("M", "MALE"):
        return "男"
    if "女" in t or t.upper() in ("F", "FEMALE"):
        return "女"
    return None


def norm_age(s: str) -> str | None:
    t = nfkc(s).replace(" ", "")
    m = re.match(r"^(\d{1,3})\s*(岁|Y|y)?", t)
    if m:
        return m.group(1) + "岁"
    m = re.match(r"^(\d{1,2}个?月|\d{1,3}天)", t)
    return m.group(1) if m else (t or None)


def norm_bed(s: str) -> str | None:
    t = nfkc(s).replace(" ", "").replace("床", "")
    if t in ("", "-", "--", "/", "—", "无", "——"):
        return None
    return t


def norm_text(s: str) -> str | None:
    t = nfkc(s).strip().strip("：:;；,，|").strip()
    t = re.sub(r"\s+", "", t)
    if t in ("", "-", "--", "/", "—", "无"):
        return None
    return t
