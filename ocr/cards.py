"""Result rows of pages without a table header: one card or list row per analyte (app screenshots and the like).

Owns: finding the line that starts a result (an analyte name, or an unknown name followed by a value with a
reference range in its block), gathering the lines under it up to the next such line (the grey "参考区间 … 单位 …"
line, an abbreviation under the name, a unit under the value), and sorting the pieces by what they hold (value,
flag glyph or pill, unit, range, code). Text colour of the value (red/blue) is passed on as flag evidence.
Never reads header fields and never keeps a row without a value.
"""
from __future__ import annotations

import re
import statistics

from .analytes import fold, lookup_abbr, lookup_name
from .inputs import Token
from .layout import STOP_WORDS, Atom, RawRow, atom_kind, split_atom, split_name_code, token_atom

# labels printed inside a card ('参考值：3.5-9.5', '单位：10^9/L', '结果 4.28'): removed before sorting the pieces
_LABEL = re.compile(r"(参考值|参考区间|参考范围|正常值|正常范围|参考|单位|结果|范围)\s*[:：]?")
_HEADER_LABEL = re.compile(r"(姓名|性别|年龄|科室|床号|样本|标本|条码|医生|医师|诊断|时间|日期|卡号|住院号|门诊号|病历号|"  # noqa: E501 - a word list (CJK counts two columns)
                           r"共\d+项|异常\d*项|检验者|审核者)")
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9#%\-/+.()]{0,9}$")
_CJK = re.compile(r"[\u4e00-\u9fff]")
MAX_BLOCK_LINES = 3      # name line + at most two lines under it
MAX_BLOCK_GAP = 2.6      # a line further below the previous one than this many name heights ends the block


def _pieces(t: Token) -> list[Atom]:
    """A token's text without card labels, split into single cells."""
    text = _LABEL.sub(" ", t.text).strip()
    if not text:
        return []
    out: list[Atom] = []
    n = max(1, len(t.text))
    w = (t.x1 - t.x0) / n
    pos = 0
    for p in text.split():
        s = t.text.find(p, pos)
        s = s if s >= 0 else pos
        pos = s + len(p)
        a = Atom(p, t.x0 + s * w, t.y0, t.x0 + (s + len(p)) * w, t.y1, t.conf, colour=t.colour)
        for b in split_atom(a):
            b.colour = t.colour
            out.append(b)
    return out


def _name_of(t: Token) -> tuple[str | None, bool]:
    """(name text, known) when the token starts a result row by its name."""
    text = t.text.strip()
    if not _CJK.search(text) and _CODE.match(text) and lookup_abbr(text):
        return text, False   # an abbreviation alone ('WBC'): a start only with a value on its line
    if not _CJK.search(text) or _HEADER_LABEL.search(text) or _LABEL.search(text) or "：" in text or ":" in text:
        return None, False
    name, code = split_name_code(text)
    if lookup_name(name)[0] is not None or (code and lookup_abbr(code)):
        return text, True
    if len(fold(name)) <= 14 and not re.search(r"\d", name):
        return text, False
    return None, False


def _is_stop(line: list[Token]) -> bool:
    txt = fold("".join(t.text for t in line))
    return any(w in txt for w in STOP_WORDS)


def card_rows(lines: list[list[Token]]) -> list[RawRow]:
    """Rows read block by block: a name line and the lines under it that belong to it."""
    starts: list[tuple[int, bool]] = []
    for i, ln in enumerate(lines):
        if _is_stop(ln):
            starts.append((i, False))
            continue
        name, known = _name_of(ln[0])
        if name is None:
            continue
        rest = [a for t in ln[1:] for a in _pieces(t)]
        has_value = any((atom_kind(a.text) or "").startswith("value_") for a in rest)
        if known or has_value:
            starts.append((i, known))
    rows: list[RawRow] = []
    for k, (i, known) in enumerate(starts):
        ln = lines[i]
        if _is_stop(ln):
            continue
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        row = _block_row(lines, i, min(end, i + MAX_BLOCK_LINES), known)
        if row is not None:
            rows.append(row)
    return rows


def _block_row(lines: list[list[Token]], i: int, end: int, known: bool) -> RawRow | None:
    ln = lines[i]
    first = ln[0]
    nh = first.h
    name_atom = token_atom(first)
    name_atom.col = "name" if _CJK.search(first.text) else "code"
    row = RawRow(0, first.cy)
    row.add(name_atom)
    have: set[str] = set()
    block = [(0, a) for t in ln[1:] for a in _pieces(t)]
    prev_y = statistics.median(t.cy for t in ln)
    for j in range(i + 1, end):
        y = statistics.median(t.cy for t in lines[j])
        if y - prev_y > MAX_BLOCK_GAP * nh or _is_stop(lines[j]):
            break
        block.extend((j - i, a) for t in lines[j] for a in _pieces(t))
        prev_y = y
    for depth, a in sorted(block, key=lambda x: (x[0], x[1].x0)):
        kind = atom_kind(a.text)
        if kind in ("value_num", "value_qual") and "result" not in have and (depth == 0 or kind == "value_num"):
            a.col = "result"
        elif kind == "value_qual" and "result" in have and "ref" not in have:
            a.col = "ref"
        elif kind == "flag" and "flag" not in have:
            a.col = "flag"
        elif kind == "unit" and "unit" not in have:
            a.col = "unit"
        elif kind == "range" and "ref" not in have:
            a.col = "ref"
        elif kind is None and "code" not in have and name_atom.col == "name" and _CODE.match(a.text) \
                and a.x0 < first.x1 + 2 * nh:
            a.col = "code"
        else:
            continue
        have.add(a.col)
        row.add(a)
    if "result" not in have:
        return None
    if not known and "ref" not in have:
        return None
    _colour_flag(row)
    return row


def _colour_flag(row: RawRow) -> None:
    """A value printed in red (blue) with no readable flag glyph: colour is the flag evidence."""
    if row.cells.get("flag"):
        return
    val = row.cells.get("result", [])
    colours = {a.colour for a in val} - {None}
    if len(colours) == 1:
        c = colours.pop()
        a = Atom("↑" if c == "red" else "↓", val[0].x1, val[0].y0, val[0].x1, val[0].y1, 0.9, col="flag")
        row.add(a)

