"""Rows and columns from box geometry.

tokens (deskewed, axis-aligned) -> lines -> table header line(s) -> column groups (one per side-by-side table)
-> atoms (tokens split where several cells were merged) assigned to columns -> rows anchored on the name column.
"""
from __future__ import annotations

import bisect
import functools
import math
import re
import statistics
from dataclasses import dataclass, field

from .analytes import fold, lookup_abbr, lookup_name
from .inputs import Token
from .parse import canon_unit, classify_value, parse_flag, parse_range


# ----------------------------------------------------------------------------- deskew
def deskew_quads(quads: list[list[tuple[float, float]]]) -> float:
    """Median baseline angle (radians) of the long boxes."""
    angles = []
    for q in quads:
        (x0, y0), (x1, y1), (_x2, _y2), (x3, y3) = q
        w = math.hypot(x1 - x0, y1 - y0)
        h = math.hypot(x3 - x0, y3 - y0)
        if h > 0 and w > 2.5 * h:
            angles.append(math.atan2(y1 - y0, x1 - x0))
    if len(angles) < 5:
        return 0.0
    return statistics.median(angles)


def rotate_quads(quads, angle: float):
    c, s = math.cos(-angle), math.sin(-angle)
    return [[(x * c - y * s, x * s + y * c) for x, y in q] for q in quads]


# ----------------------------------------------------------------------------- header keywords
ROLE_WORDS = {
    "seq": ["序号", "no.", "no", "编号", "#"],
    "name": ["项目名称", "检验项目", "检查项目", "检测项目", "中文名称", "试验项目", "分析项目", "项目", "名称",
             "testname", "test", "item", "analyte"],
    "code": ["英文缩写", "缩写", "代号", "英文名称", "简称", "代码", "英文", "code", "abbr."],
    "result": ["检验结果", "测定结果", "检测结果", "结果值", "测定值", "检测值", "结果", "result", "value"],
    "flag": ["异常提示", "提示", "标志", "异常", "标记", "状态", "flag"],
    "unit": ["单位", "units", "unit"],
    "ref": ["生物参考区间", "参考范围", "参考区间", "参考值", "正常范围", "正常值", "参考", "referencerange",
            "refrange", "reference", "range", "ref."],
}
_WORDS = sorted(((fold(w), r) for r, ws in ROLE_WORDS.items() for w in ws), key=lambda x: -len(x[0]))


@functools.lru_cache(maxsize=8192)
def split_keywords(text: str) -> list[tuple[str, int, int]] | None:
    """Split a header box into (role, start, end) char spans; None if it is not made only of keywords.

    Allows one OCR slip per keyword of 3+ chars (one substituted character, first or last kept); exact keywords
    are tried first, a slipped longer one when the exact reading leaves the rest unparsable ('参考范图')."""
    t = fold(text).lower()
    out = _split_from(t, 0)
    return out or None


def _split_from(t: str, i: int) -> list[tuple[str, int, int]] | None:
    while i < len(t) and t[i] in " :：|":
        i += 1
    if i >= len(t):
        return []
    cands: list[tuple[str, int, int]] = []
    for w, r in _WORDS:
        if t.startswith(w, i):
            cands.append((r, i, i + len(w)))
            break
    for w, r in _WORDS:
        if len(w) >= 3 and i + len(w) <= len(t):
            seg = t[i:i + len(w)]
            diff = sum(a != b for a, b in zip(seg, w, strict=False))
            if diff == 1 and (seg[0] == w[0] or seg[-1] == w[-1]):
                cands.append((r, i, i + len(w)))
    for hit in cands:
        rest = _split_from(t, hit[2])
        if rest is not None:
            return [hit, *rest]
    return None


# ----------------------------------------------------------------------------- structures
@dataclass
class Atom:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    conf: float
    col: str | None = None
    colour: str | None = None   # "red" | "blue" glyphs (screenshots), see colour.py

    @property
    def cx(self):
        return (self.x0 + self.x1) / 2

    @property
    def cy(self):
        return (self.y0 + self.y1) / 2


@dataclass
class Column:
    role: str
    x0: float
    x1: float


@dataclass
class RawRow:
    group: int
    cy: float
    cells: dict[str | None, list[Atom]] = field(default_factory=dict)   # None: an atom in no column

    def add(self, a: Atom):
        self.cells.setdefault(a.col, []).append(a)

    def text(self, role: str) -> str:
        """The cell's text in reading order: line by line (a wrapped name, a code under the name), left to right."""
        lines: list[list[Atom]] = []
        for a in sorted(self.cells.get(role, []), key=lambda a: a.cy):
            if lines and abs(a.cy - lines[-1][0].cy) < 0.5 * min(a.y1 - a.y0, lines[-1][0].y1 - lines[-1][0].y0):
                lines[-1].append(a)
            else:
                lines.append([a])
        return " ".join(a.text for ln in lines for a in sorted(ln, key=lambda a: a.x0)).strip()

    def bbox(self) -> list[float]:
        al = [a for v in self.cells.values() for a in v]
        return [min(a.x0 for a in al), min(a.y0 for a in al), max(a.x1 for a in al), max(a.y1 for a in al)]

    def conf(self, role: str) -> float | None:
        al = self.cells.get(role)
        return min(a.conf for a in al) if al else None


@dataclass
class Table:
    header_y: float
    groups: list[list[Column]]
    rows: list[RawRow]
    body_top: float
    body_bottom: float


def token_atom(t: Token) -> Atom:
    return Atom(t.text, t.x0, t.y0, t.x1, t.y1, t.conf, colour=t.colour)


def group_lines(tokens: list[Token], H: float) -> list[list[Token]]:
    lines: list[list[Token]] = []
    for t in sorted(tokens, key=lambda t: t.cy):
        if lines:
            ln = lines[-1]
            lcy = statistics.median(x.cy for x in ln)
            if abs(t.cy - lcy) < 0.5 * H:
                ln.append(t)
                continue
        lines.append([t])
    return [sorted(ln, key=lambda t: t.x0) for ln in lines]


def _sub_atom(t: Token | Atom, s: int, e: int, text: str | None = None) -> Atom:
    n = max(1, len(t.text))
    w = (t.x1 - t.x0) / n
    return Atom(text if text is not None else t.text[s:e], t.x0 + s * w, t.y0, t.x0 + e * w, t.y1,
                getattr(t, "conf", 1.0), colour=getattr(t, "colour", None))


def _merge_spaced(line: list[Token]) -> list[Token]:
    """Letter-spaced header cells ('结  果') may come back as one box per character: join close neighbours
    whose texts are not keywords on their own."""
    out: list[Token] = []
    for t in line:
        if out:
            p = out[-1]
            gap = t.x0 - p.x1
            if (len(fold(p.text)) <= 2 or len(fold(t.text)) <= 1) and split_keywords(p.text) is None \
                    and 0 <= gap < 1.6 * max(p.h, t.h):
                out[-1] = Token(p.text + t.text, p.x0, min(p.y0, t.y0), t.x1, max(p.y1, t.y1), min(p.conf, t.conf))
                continue
        out.append(t)
    return out


_KEY_BIGRAMS = {w[:2] for w, _ in _WORDS if len(w) >= 2}


def header_columns(line: list[Token]) -> list[Column] | None:
    joined = fold("".join(t.text for t in line)).lower()
    if sum(1 for b in _KEY_BIGRAMS if b in joined) < 2:  # cheap reject: a header holds several keywords
        return None
    cols = []
    unknown = []
    for t in _merge_spaced(line):
        spans = split_keywords(t.text)
        if spans is None:
            if len(fold(t.text)) >= 2:
                unknown.append(Column("other", t.x0, t.x1))  # e.g. 检测方法: keeps its cells out of neighbours
            continue
        for r, s, e in spans:
            a = _sub_atom(t, s, e)
            cols.append(Column(r, a.x0, a.x1))
    roles = {c.role for c in cols}
    if len(roles) >= 3 and "result" in roles and ("name" in roles or "ref" in roles) and len(unknown) <= len(cols):
        return sorted(cols + unknown, key=lambda c: c.x0)
    return None


def split_groups(cols: list[Column]) -> list[list[Column]]:
    groups: list[list[Column]] = [[]]
    for c in cols:
        if c.role != "other" and any(x.role == c.role for x in groups[-1]):
            groups.append([])
        groups[-1].append(c)
    return [g for g in groups if any(c.role != "other" for c in g)]


STOP_WORDS = ["检验者", "审核者", "检验医师", "审核医师", "审核人", "检验人", "报告时间", "报告日期", "采集时间", "采样时间",  # noqa: E501 - a word list (CJK counts two columns)
              "接收时间", "签收时间", "备注", "声明", "温馨提示", "本结果", "本报告", "仅供", "第1页", "送检者", "检验员",  # noqa: E501 - a word list (CJK counts two columns)
              "核对者", "操作者"]


# ----------------------------------------------------------------------------- atoms
_RANGE_PAT = r"[<>≤≥＜＞]?\s*-?\d+(?:\.\d+)?\s*(?:--|-|~|～|〜|—)\s*\d+(?:\.\d+)?|[<>≤≥＜＞]\s*\d+(?:\.\d+)?"
_SPLITTERS = [
    # unit then range: 'μmol/L 41-81'
    re.compile(rf"^(?P<a>[^\d<>≤≥＜＞]\S*?)\s*(?P<b>{_RANGE_PAT})$"),
    # range then unit: '41-81 μmol/L'
    re.compile(rf"^(?P<a>{_RANGE_PAT})\s*(?P<b>\D.*)$"),
    # value(+flag) then range: '325 0.59-1.03', '6.52↑ 3.5-9.5'
    re.compile(rf"^(?P<a>-?\d+(?:\.\d+)?\s*[↑↓HL]?)\s+(?P<b>{_RANGE_PAT})$"),
    # value then flag then anything
    re.compile(r"^(?P<a>-?\d+(?:\.\d+)?)\s*(?P<b>[↑↓])\s*(?P<c>.+)$"),
    # value then unit: '5.72 mmol/L'
    re.compile(r"^(?P<a>-?\d+(?:\.\d+)?[↑↓]?)\s+(?P<b>\D\S*)$"),
    # flag then range / unit
    re.compile(rf"^(?P<a>[↑↓HL])\s+(?P<b>{_RANGE_PAT}|\D\S*)$"),
    # name (with or without its code) glued to the value: '高密度脂蛋白胆固醇(HDL-C)0.92'
    re.compile(r"^(?P<a>.*[\u4e00-\u9fff)）])\s*(?P<b>[<>≤≥]?\d+(?:\.\d+)?[↑↓]?)$"),
    # code then name: 'WBC 白细胞计数'  / name then code
    re.compile(r"^(?P<a>[A-Za-z][A-Za-z0-9#%\-/+.()]*)\s+(?P<b>[\u4e00-\u9fffγ].*)$"),
]


def atom_kind(text: str) -> str | None:
    t = text.strip()
    if not t:
        return None
    if parse_flag(t):
        return "flag"
    if canon_unit(t):
        return "unit"
    r = parse_range(t)
    if r is not None and r[2] != "qual":
        return "range"
    k = classify_value(t)
    if k:
        return "value_" + k
    return None


def split_atom(a: Atom) -> list[Atom]:
    """Split a box that holds several cells; spaces first, then known glued patterns."""
    t = a.text.strip()
    if atom_kind(t) or not t:
        return [a]
    for rx in _SPLITTERS:
        m = rx.match(t)
        if m:
            parts = []
            for g in ("a", "b", "c"):
                if g in rx.groupindex and m.group(g):
                    s, e = m.span(g)
                    parts.append(_sub_atom(a, s, e, t[s:e].strip()))
            if all(atom_kind(p.text) or re.search(r"[\u4e00-\u9fff]", p.text) for p in parts):
                out = []
                for p in parts:
                    out.extend(split_atom(p) if p.text != t else [p])
                return out
    if " " in t:
        pieces, out, pos = t.split(), [], 0
        kinds = [atom_kind(p) for p in pieces]
        if sum(k is not None for k in kinds) >= 2:
            for piece in pieces:
                s = t.index(piece, pos)
                out.append(_sub_atom(a, s, s + len(piece), piece))
                pos = s + len(piece)
            return out
    return [a]


# ----------------------------------------------------------------------------- table
def find_tables(tokens: list[Token]) -> tuple[list[Table], float, list[list[Token]]]:
    if not tokens:
        return [], 10.0, []
    H = statistics.median([t.h for t in tokens]) or 10.0
    lines = group_lines(tokens, H)
    tables: list[Table] = []
    i = 0
    while i < len(lines):
        cols = header_columns(lines[i])
        if cols is None:
            i += 1
            continue
        groups = split_groups(cols)
        header_y = statistics.median(t.cy for t in lines[i])
        # body: until a stop line, the next header, or a large gap
        body: list[list[Token]] = []
        j = i + 1
        last_y = header_y
        pitch = None
        while j < len(lines):
            ln = lines[j]
            txt = fold("".join(t.text for t in ln))
            cy = statistics.median(t.cy for t in ln)
            if header_columns(ln) is not None:
                break
            if any(w in txt for w in STOP_WORDS) and body:
                break
            gap = cy - last_y
            if body and pitch and gap > 3.5 * pitch:
                break
            if body:
                # a gap under one line height is a wrapped cell (a name, a range), not the row pitch
                pitch = (gap if pitch is None else min(pitch, gap)) if gap > 1.0 * H else pitch
            body.append(ln)
            last_y = cy
            j += 1
        rows = build_rows(groups, body, H)
        top = header_y
        bottom = last_y
        tables.append(Table(header_y, groups, rows, top, bottom))
        i = j
    return tables, H, lines


def _assign_col(a: Atom, groups: list[list[Column]]) -> tuple[int, str] | None:
    flat = [(gi, c) for gi, g in enumerate(groups) for c in g]
    flat.sort(key=lambda x: x[1].x0)
    x = a.cx
    best = None
    for k, (gi, c) in enumerate(flat):
        left = -1e9 if k == 0 else (flat[k - 1][1].x1 + c.x0) / 2
        right = 1e9 if k == len(flat) - 1 else (c.x1 + flat[k + 1][1].x0) / 2
        if left <= x < right:
            best = (gi, c.role)
            break
    return best


def build_rows(groups: list[list[Column]], body: list[list[Token]], H: float) -> list[RawRow]:
    atoms: list[tuple[int, Atom]] = []
    for ln in body:
        for t in ln:
            for a in split_atom(token_atom(t)):
                gc = _assign_col(a, groups)
                if gc is None:
                    continue
                gi, role = gc
                a.col = role
                atoms.append((gi, a))
    rows: list[RawRow] = []
    for gi, g in enumerate(groups):
        roles = {c.role for c in g}
        anchor_roles: list[str] = [r for r in ("name", "code") if r in roles] or ["seq"]
        gatoms = [a for (k, a) in atoms if k == gi]
        anchors = sorted([a for a in gatoms if a.col == anchor_roles[0] and _is_anchor(a)], key=lambda a: a.cy)
        if not anchors and len(anchor_roles) > 1:
            anchors = sorted([a for a in gatoms if a.col == anchor_roles[1]], key=lambda a: a.cy)
        # merge anchors on the same line (a name split into two boxes)
        grows: list[RawRow] = []
        for a in anchors:
            if grows and abs(grows[-1].cy - a.cy) < 0.5 * H:
                grows[-1].add(a)
                continue
            r = RawRow(gi, a.cy)
            r.add(a)
            grows.append(r)
        if not grows:
            continue
        rest = [a for a in gatoms if not (a.col == anchor_roles[0] and any(a in r.cells.get(a.col, []) for r in grows))]
        shifts = column_shifts(grows, rest, H)
        for a in rest:
            y = a.cy - shifts.get(a.col or "", 0.0)
            best = min(grows, key=lambda r: abs(r.cy - y))
            if abs(best.cy - y) < 0.75 * H:
                best.add(a)
        rows.extend(merge_wrapped(grows, H))
    return rows


def column_shifts(rows: list[RawRow], atoms: list[Atom], H: float) -> dict[str, float]:
    """Vertical offset of each column's cells from their rows' anchors, followed column by column outwards from the
    anchor column: on a curled or folded page the baselines bow, so a cell far from the name sits up to a row
    away from the name's height; each column's offset is the previous column's plus the median remaining
    misfit of its cells (when it has three or more), so a gradual bow is followed without ever jumping a row."""
    if not rows:
        return {}
    anchor_x = statistics.median((a.x0 + a.x1) / 2 for r in rows for al in r.cells.values() for a in al)
    by_col: dict[str, list[Atom]] = {}
    for a in atoms:
        by_col.setdefault(a.col or "", []).append(a)
    xs = {c: statistics.median(a.cx for a in al) for c, al in by_col.items()}
    ys = sorted(r.cy for r in rows)
    shifts: dict[str, float] = {}
    for side in (1, -1):
        prev = 0.0
        for c in sorted((c for c in xs if (xs[c] - anchor_x) * side >= 0), key=lambda c: abs(xs[c] - anchor_x)):
            misfit = []
            for a in by_col[c]:
                y = a.cy - prev
                k = bisect.bisect_left(ys, y)
                near = min((ys[j] for j in (k - 1, k) if 0 <= j < len(ys)), key=lambda v: abs(v - y))
                if abs(y - near) < 0.75 * H:
                    misfit.append(y - near)
            if len(misfit) >= 3:
                prev += statistics.median(misfit)
            shifts.setdefault(c, prev)
    return shifts


_CODE_LINE = re.compile(r"^[(（]?[A-Za-z][A-Za-z0-9#%\-/+.()]{0,11}[)）]?$")


def _anchor_text(r: RawRow) -> str:
    return "".join(a.text.strip() for role in ("name", "code") for a in r.cells.get(role, []))


def _wrap_pair(a: RawRow, b: RawRow) -> bool:
    """Two anchor rows that are one row whose name cell wraps: a name and its code under (or over) it, or a long
    name broken over two lines; at most one of them holds a result."""
    if a.cells.get("result") and b.cells.get("result"):
        return False
    ta, tb = _anchor_text(a), _anchor_text(b)
    if not ta or not tb:
        return False
    cjk = re.compile(r"[\u4e00-\u9fff]")
    if (_CODE_LINE.match(tb) and cjk.search(ta)) or (_CODE_LINE.match(ta) and cjk.search(tb)):
        return True
    if cjk.search(ta) and cjk.search(tb) and lookup_name(split_name_code(ta)[0])[0] is None:
        return lookup_name(split_name_code(ta + tb)[0])[0] is not None
    return False


def merge_wrapped(rows: list[RawRow], H: float) -> list[RawRow]:
    """Merge anchor rows closer than a row pitch that are one wrapped row (see _wrap_pair)."""
    out: list[RawRow] = []
    for r in sorted(rows, key=lambda r: r.cy):
        if out and r.cy - out[-1].cy < 1.3 * H and _wrap_pair(out[-1], r):
            for al in r.cells.values():
                for a in al:
                    out[-1].add(a)
            continue
        out.append(r)
    return out


def _is_anchor(a: Atom) -> bool:
    t = a.text.strip()
    if not t:
        return False
    if re.fullmatch(r"[\d.\s]+", t):  # a seq number that strayed into the name column
        return False
    return True


# ----------------------------------------------------------------------------- name / code cell
NAME_CODE_RE = re.compile(
    r"^(?P<name>.*?)\s*[(（]\s*(?P<code>[A-Za-z0-9#%/+\-.βγ ]+(?:\([A-Za-z0-9]{1,3}\))?)\s*[)）]?$")
NAME_SPACE_CODE_RE = re.compile(r"^(?P<name>.+?)\s+[(（]?(?P<code>[A-Za-z][A-Za-z0-9#%\-/+.]*(?:\([A-Za-z0-9]{1,3}\))?)[)）]?$")  # noqa: E501 - a word list (CJK counts two columns)
NAME_TRAIL_CODE_RE = re.compile(r"^(?P<name>.*[\u4e00-\u9fff)）])\s*(?P<code>[A-Za-z][A-Za-z0-9#%\-/+.]*)$")
CODE_NAME_RE = re.compile(r"^(?P<code>[A-Za-z][A-Za-z0-9#%\-/+.]*)\s*(?P<name>[\u4e00-\u9fffγ].*)$")


def split_name_code(text: str) -> tuple[str, str | None]:
    t = text.strip()
    m = NAME_SPACE_CODE_RE.match(t)
    if m and lookup_name(m.group("name"))[0] is not None and lookup_name(t)[0] is None:
        return m.group("name").strip(), m.group("code").strip()   # '脂蛋白a Lp(a)': a known name, then its code
    m = NAME_CODE_RE.match(t)
    if m and m.group("name"):
        # 'Lp(a)' style names end in '(a)': keep them whole when the whole thing is a known name
        if lookup_name(t)[0] is not None and lookup_name(m.group("name"))[0] is None:
            return t, None
        return m.group("name").strip(), m.group("code").strip()
    m = CODE_NAME_RE.match(t)
    if m and lookup_abbr(m.group("code")):
        return m.group("name").strip(), m.group("code").strip()
    m = NAME_TRAIL_CODE_RE.match(t)
    if m and (lookup_abbr(m.group("code")) or lookup_name(m.group("name"))[0] is not None) \
            and lookup_name(t)[0] is None:
        # 'name code' printed in one line without brackets: '丙氨酸氨基转移酶 ALT', '尿酸UA'
        return m.group("name").strip(), m.group("code").strip()
    m = NAME_SPACE_CODE_RE.match(t)
    if m and lookup_name(t)[0] is None and (lookup_name(m.group("name"))[0] is not None
                                            or lookup_abbr(m.group("code"))):
        # a name ending in Latin letters with its code after it: '载脂蛋白AI APOA1'
        return m.group("name").strip(), m.group("code").strip()
    return t, None


# ----------------------------------------------------------------------------- fallback without a header row
def headerless_rows(lines: list[list[Token]], H: float) -> list[RawRow]:
    """Rows for pages whose table header was not found: anchor on known analyte names (or abbreviations followed by
    a result) and read the cells to their right by content type. Every row from here is marked for review."""
    rows: list[RawRow] = []
    for ln in lines:
        atoms: list[Atom] = []
        for t in ln:
            atoms.extend(split_atom(token_atom(t)))
        atoms.sort(key=lambda a: a.x0)
        anchors = []
        for k, a in enumerate(atoms):
            name, code = split_name_code(a.text)
            if lookup_name(name)[0] is not None or (code and lookup_abbr(code)):
                anchors.append(k)
            elif lookup_abbr(a.text) and k + 1 < len(atoms) and atom_kind(atoms[k + 1].text) in (
                    "value_num", "value_qual") and not (anchors and anchors[-1] == k - 1):
                anchors.append(k)
        for n, k in enumerate(anchors):
            end = anchors[n + 1] if n + 1 < len(anchors) else len(atoms)
            seg = atoms[k + 1:end]
            first = atoms[k]
            first.col = "name" if lookup_name(split_name_code(first.text)[0])[0] is not None else "code"
            row = RawRow(0, first.cy)
            row.add(first)
            have: set[str] = set()
            for a in seg:
                kind = atom_kind(a.text)
                if kind is None and lookup_abbr(a.text) and "code" not in have and first.col == "name":
                    a.col = "code"
                elif kind == "flag" and "flag" not in have:
                    a.col = "flag"
                elif kind == "unit" and "unit" not in have:
                    a.col = "unit"
                elif kind == "range" and "ref" not in have:
                    a.col = "ref"
                elif kind in ("value_num", "value_qual") and "result" not in have:
                    a.col = "result"
                elif kind == "value_qual" and "ref" not in have:
                    a.col = "ref"
                else:
                    continue
                have.add(a.col)
                row.add(a)
            if "result" in have:
                rows.append(row)
    return rows
