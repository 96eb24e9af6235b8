"""extract(bytes) -> LabReport."""
from __future__ import annotations

import re
import statistics
import time
from typing import TYPE_CHECKING

from . import __version__
from .analytes import fold, lookup_abbr, lookup_name
from .cards import card_rows
from .cells import reread_empty_cells
from .chrome import drop_chrome
from .colour import mark_colours
from .engine import TextBox
from .inputs import Token, load_pages
from .layout import RawRow, deskew_quads, find_tables, headerless_rows, rotate_quads, split_name_code
from .parse import (
    canon_unit,
    derive_flag,
    norm_age,
    norm_bed,
    norm_date,
    norm_sex,
    norm_text,
    parse_flag,
    parse_number,
    parse_range,
    qual_level,
    repair_number,
    split_value_flag,
)
from .report import LabReport, ResultRow
from .screen_header import screen_header
from .screenshot import is_screenshot, read_screen

if TYPE_CHECKING:
    pass

HEADER_FIELDS = ["hospital", "title", "name", "sex", "age", "department", "bed", "specimen", "sample_id", "doctor",
                 "collected_at", "received_at", "reported_at", "patient_id", "diagnosis"]

LABELS = {
    "name": ["患者姓名", "病人姓名", "姓名", "就诊人", "患者"],
    "sex": ["性别"],
    "age": ["年龄"],
    "department": ["申请科室", "送检科室", "就诊科室", "科室", "科别"],
    "bed": ["床号", "床位"],
    "specimen": ["标本类型", "样本类型", "标本种类", "样本种类", "标本", "样本"],
    "sample_id": ["标本编号", "样本编号", "标本号", "样本号", "条码号", "条形码", "条码"],
    "patient_id": ["门诊号", "住院号", "病历号", "ID号", "病人ID", "患者ID", "就诊卡号", "卡号"],
    "doctor": ["送检医生", "开单医生", "申请医生", "送检医师", "开单医师", "申请医师", "医生"],
    "diagnosis": ["临床诊断", "诊断"],
    "collected_at": ["采集时间", "采样时间", "采集日期", "采样日期"],
    "received_at": ["接收时间", "签收时间", "收样时间", "接收日期"],
    "reported_at": ["报告时间", "报告日期", "审核时间"],
    "_stop": ["检验者", "审核者", "检验医师", "审核医师", "检验员", "审核人", "备注", "温馨提示", "提示", "电话", "地址"],  # noqa: E501 - a word list (CJK counts two columns)
}
_LABEL_LIST = sorted(((w, f) for f, ws in LABELS.items() for w in ws), key=lambda x: -len(x[0]))
_LABEL_FIELD = dict(_LABEL_LIST)
_LABEL_RE = re.compile("|".join(re.escape(w) for w, _ in _LABEL_LIST))


def _ocr_tokens(img, engine, *, deskew: bool = True) -> tuple[list[Token], float, list[float]]:
    boxes = engine.recognize(img)
    return _boxes_tokens(boxes, deskew=deskew)


def _boxes_tokens(boxes: list[TextBox], *, deskew: bool = True) -> tuple[list[Token], float, list[float]]:
    quads = [b.quad for b in boxes]
    ang = deskew_quads(quads) if deskew else 0.0
    if abs(ang) > 0.002:
        quads = rotate_quads(quads, ang)
    toks = []
    for b, q in zip(boxes, quads, strict=False):
        xs, ys = [p[0] for p in q], [p[1] for p in q]
        toks.append(Token(b.text, min(xs), min(ys), max(xs), max(ys), b.score, ang))
    return split_vertical(toks), ang, [b.score for b in boxes]


def split_vertical(toks: list[Token]) -> list[Token]:
    """Detection sometimes joins one-character cells of consecutive rows into one tall box ('钠氯钙')."""
    if not toks:
        return toks
    H = statistics.median(t.h for t in toks)
    out = []
    for t in toks:
        n = len(t.text.strip())
        w = t.x1 - t.x0
        if n >= 2 and t.h > 1.8 * H and w < 1.6 * H and t.h / n > 0.6 * H:
            step = t.h / n
            for k, ch in enumerate(t.text.strip()):
                out.append(Token(ch, t.x0, t.y0 + k * step, t.x1, t.y0 + (k + 1) * step, t.conf, t.angle))
        else:
            out.append(t)
    return out


def _rot90(img, k: int):
    import numpy as np

    return np.ascontiguousarray(np.rot90(img, k))


def _turn_candidates(tokens: list[Token]) -> list[int]:
    """Quarter turns (np.rot90 k, counter-clockwise) worth a second OCR pass, most likely first."""
    if not tokens:
        return []
    tall = sum(1 for t in tokens if len(t.text) >= 3 and t.h > 1.5 * (t.x1 - t.x0))
    wide = sum(1 for t in tokens if len(t.text) >= 3 and (t.x1 - t.x0) > 1.5 * t.h)
    if tall > wide:
        return [1, 3]   # text runs vertically: the page is on its side
    return [2]          # upside down


# ----------------------------------------------------------------------------- header
def extract_header(lines: list[list[Token]], table_top: float | None, table_bottoms: list[tuple[float, float]]):
    header = dict.fromkeys(HEADER_FIELDS)
    conf = {}
    in_table = lambda y: any(a < y <= b + 1 for a, b in table_bottoms)
    text_lines = []
    for ln in lines:
        y = statistics.median(t.cy for t in ln)
        if in_table(y):
            continue
        text_lines.append((y, ln))
    # hospital / title: the first lines above the first table
    top_lines = [(y, ln) for y, ln in text_lines if table_top is None or y < table_top]
    for _y, ln in top_lines[:4]:
        s = fold("".join(t.text for t in ln))
        if header["title"] is None and re.search(r"(报告|检验单|化验单|检查单)", s) and "：" not in s and ":" not in s \
                and len(s) <= 30:
            header["title"] = re.sub(r"\s+", "", s)
            conf["title"] = min(t.conf for t in ln)
    for _y, ln in top_lines[:4]:
        cand = [t for t in ln if re.search(r"(医院|卫生|中心|诊所|医学院|保健院|研究所|门诊部|检验所)", fold(t.text))
                and "报告" not in t.text]
        if cand:
            header["hospital"] = norm_text(max(cand, key=lambda t: t.h).text)
            conf["hospital"] = cand[0].conf
            break
    if header["hospital"] is None and top_lines:
        first = [t for t in top_lines[0][1] if not re.fullmatch(r"[\dA-Za-z\-]+", t.text.strip())]
        if first and "报告" not in first[0].text:
            header["hospital"] = norm_text(max(first, key=lambda t: t.h).text)
    # label: value pairs
    for _y, ln in text_lines:
        s = " | ".join(fold(t.text).replace(":", "：") for t in ln)
        tconf = min(t.conf for t in ln)
        hits = []
        for m in _LABEL_RE.finditer(s):
            i, w = m.start(), m.group(0)
            f = _LABEL_FIELD[w]
            # a label is followed by a colon, a separator or a space, or starts a box (avoid '尿素' in values etc.)
            nxt = s[i + len(w):i + len(w) + 1]
            at_start = i == 0 or s[i - 1] in " |："
            if nxt in ("：", " ", "|") or f in ("sex", "age") or (at_start and f != "_stop"):
                hits.append((i, i + len(w), f))
        for k, (_s0, e0, f) in enumerate(hits):
            end = hits[k + 1][0] if k + 1 < len(hits) else len(s)
            val = s[e0:end].strip(" ：|")
            val = val.split(" | ")[0].strip() if f not in ("collected_at", "received_at", "reported_at") else val
            if f == "_stop" or header.get(f) is not None:
                continue
            v = _norm_header_value(f, val)
            if v is not None or f == "bed":
                header[f] = v
                conf[f] = tconf
    return header, conf


def _norm_header_value(f: str, val: str):
    if f in ("collected_at", "received_at", "reported_at"):
        return norm_date(val.replace(" | ", " "))
    if f == "sex":
        return norm_sex(val)
    if f == "age":
        return norm_age(val)
    if f == "bed":
        return norm_bed(val)
    return norm_text(val)


# ----------------------------------------------------------------------------- rows
def _value_from(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    parts = text.split()
    for p in [text.replace(" ", "")] + parts:
        v, fl = split_value_flag(p)
        v2 = repair_number(v)
        if re.fullmatch(r"[<>≤≥]?-?\d+(?:\.\d+)?", v2):
            return v2, fl
        if qual_level(v):
            return v, fl
    return None, None


def finalize_row(raw: RawRow, seq: int, page: int) -> ResultRow | None:
    name_txt = raw.text("name")
    code_txt = raw.text("code")
    if name_txt:  # a name wrapped over two lines comes back as two pieces
        name_txt = re.sub(r"(?<=[\u4e00-\u9fff])\s+(?=[\u4e00-\u9fff(（])", "", name_txt)
    name, code_in_name = split_name_code(name_txt) if name_txt else (None, None)
    if name and not code_txt and code_in_name is None:
        # 'WBC 白细胞计数' in one box
        m = re.match(r"^([A-Za-z][A-Za-z0-9#%\-/+.]*)\s*([\u4e00-\u9fff].*)$", name)
        if m and lookup_abbr(m.group(1)):
            code_in_name, name = m.group(1), m.group(2)
    printed_code = code_txt or code_in_name
    if printed_code and re.fullmatch(r"[A-Za-z0-9#%/+\-.()\s]+", printed_code):
        printed_code = re.sub(r"\s+", "", printed_code)
    an_name, dict_name, dist = lookup_name(name) if name else (None, None, 99)
    an_code = lookup_abbr(printed_code) if printed_code else None
    analyte = an_name or an_code
    if an_name and an_code and an_name.code != an_code.code:
        analyte = an_code if dist > 0 else an_name
    if name and dict_name and 0 < dist:
        name = dict_name  # repaired OCR slip in the name
    reasons: list[str] = []
    # pool every atom by kind, columns first
    val_txt = raw.text("result")
    flag_txt = raw.text("flag")
    unit_txt = raw.text("unit")
    ref_txt = raw.text("ref")
    value, glued_flag = _value_from(val_txt)
    unit = canon_unit(unit_txt) if unit_txt else None
    rng = parse_range(ref_txt) if ref_txt else None
    pflag = parse_flag(flag_txt) if flag_txt else None
    # content-type fallback: look at atoms in other columns
    others = [a for role, al in raw.cells.items() for a in al if role not in ("name", "code", "seq")]
    for a in others:
        t = a.text.strip()
        if pflag is None and parse_flag(t) and a.col != "result":
            pflag = parse_flag(t)
        elif unit is None and canon_unit(t):
            unit, unit_txt = canon_unit(t), t
        elif rng is None and a.col != "result" and (found := parse_range(t)) is not None and found[2] != "qual":
            rng, ref_txt = found, t
        elif value is None and a.col in ("flag", "unit", "other", None):
            v, fl = _value_from(t)
            if v is not None and (qual_level(v) is None or a.col == "flag"):
                value, glued_flag = v, fl
    if rng is None and ref_txt and a_qual_ref(ref_txt):
        rng = (None, None, "qual")
    if value is not None and pflag is None and glued_flag is None:
        repaired = arrow_read_as_digit(value, rng, ref_txt, analyte.plausible if analyte else None)
        if repaired is not None:
            value, glued_flag = repaired, "H"
            reasons.append("a trailing 1 read as the ↑ glued to the value")
    printed = pflag or glued_flag
    if value is None and not name:
        return None
    if analyte is None and value is None and rng is None:
        return None
    lo, hi, kind = rng if rng else (None, None, None)
    derived = derive_flag(value, lo, hi, kind)
    derivable = value is not None and kind is not None and (
        (kind == "qual") == (qual_level(value) is not None) or kind == "qual")
    flag = printed if printed else derived
    if derivable and printed != derived:
        # lone ↑/↓ glyphs are often missed by OCR (or the layout prints none): value vs range decides, silently;
        # a printed flag that contradicts value vs range is a consistency failure worth a human look
        if printed:
            reasons.append(f"printed flag {printed} disagrees with value vs range ({derived or 'none'})")
        flag = derived
    if not derivable:
        derived = None
    # consistency checks
    if value is None:
        reasons.append("name without a value")
        if kind == "qual":
            reasons.append("qualitative result missing: never assume negative")
    num = parse_number(value) if value and qual_level(value) is None else None
    if analyte is not None:
        primary_unit = unit is None or unit == analyte.units[0]
        if analyte.plausible and num is not None and primary_unit and not (
                analyte.plausible[0] <= num <= analyte.plausible[1]):
            reasons.append(f"value {value} implausible for {analyte.code}")
        if unit is not None and analyte.units and unit not in analyte.units and None not in analyte.units:
            reasons.append(f"unit {unit} not expected for {analyte.code}")
        if unit is None and analyte.units and None not in analyte.units:
            reasons.append("unit missing")
    else:
        reasons.append("analyte not in dictionary")
    if rng is None:
        reasons.append("reference range missing or unreadable")
    elif kind == "range" and lo is not None and hi is not None and lo > hi:
        reasons.append("reference range inverted")
    if unit_txt and unit is None:
        reasons.append(f"unit '{unit_txt}' not recognised")
    read = {"name": raw.conf("name") or raw.conf("code"), "value": raw.conf("result"), "unit": raw.conf("unit"),
            "ref": raw.conf("ref"), "flag": raw.conf("flag")}
    confs = {k: round(v, 4) for k, v in read.items() if v is not None}
    rconf = min(confs.values()) if confs else None
    out_name = name if name else (analyte.names[0] if analyte else None)
    return ResultRow(
        seq=seq, name=out_name, code=printed_code or (analyte.code if analyte else None),
        std_code=analyte.code if analyte else None, loinc=analyte.loinc if analyte else None,
        value=value, value_num=num, qual_level=qual_level(value) if value else None,
        unit=unit, unit_printed=unit_txt or None, ref_low=lo, ref_high=hi, ref_text=ref_txt or None,
        flag=flag, flag_printed=printed, flag_derived=derived, page=page,
        bbox=[round(v, 1) for v in raw.bbox()], confidence=confs, conf=rconf,
        needs_review=bool(reasons) or (rconf is not None and rconf < 0.6), review_reasons=reasons)


def _decimals(t: str) -> int:
    return len(t.split(".")[1]) if "." in t else 0


def arrow_read_as_digit(value: str, rng: tuple[float | None, float | None, str | None] | None, ref_text: str | None,
                        plausible: tuple[float, float] | None) -> str | None:
    """'46.91' for a printed '46.9↑': OCR reads a glued up-arrow as a trailing 1. The value without its last digit,
    when that one is above the reference range (an up-arrow's meaning) and either the printed value is impossible
    for the analyte or it carries one more decimal than the range does; else None."""
    high = rng[1] if rng is not None and rng[2] in ("range", "lt") else None
    if high is None or not re.fullmatch(r"\d+(?:\.\d+)?1", value):
        return None
    cut = value[:-1].rstrip(".")
    cut_num = parse_number(cut) if cut else None
    if cut_num is None or cut_num <= high:
        return None
    num = parse_number(value)
    impossible = plausible is not None and num is not None and not (plausible[0] <= num <= plausible[1])
    range_dec = max((_decimals(x) for x in re.findall(r"\d+(?:\.\d+)?", ref_text or "")), default=0)
    extra_decimal = "." in value and _decimals(value) == range_dec + 1 and range_dec > 0
    return cut if impossible or extra_decimal else None


def a_qual_ref(t: str) -> bool:
    return qual_level(t) in ("neg",)


# ----------------------------------------------------------------------------- main
def extract(data: bytes, *, filename_hint: str | None = None, engine=None) -> LabReport:
    """Pure: bytes of a PNG/JPEG/PDF in, LabReport out. Raises ocr.errors.InputError subclasses on bad input."""
    from .engine import get_engine
    from .preprocess import prepare

    t0 = time.perf_counter()
    fmt, pages = load_pages(data, filename_hint)
    header = dict.fromkeys(HEADER_FIELDS)
    hconf: dict = {}
    results: list[ResultRow] = []
    warnings: list[str] = []
    page_info = []
    provenance = {"package": f"ocr {__version__}"}
    for p in pages:
        info = {"page": p.number, "kind": p.kind}
        screen = False
        if p.image is not None:
            eng = engine or get_engine()
            provenance.update(eng.info.as_dict())
            ta = time.perf_counter()
            screen = is_screenshot(p.image)
            if screen:
                # a phone screenshot: flat, upright, no page edges; read in full-resolution tiles, never shrunk
                img, steps = p.image, ["screenshot"]
                tb = time.perf_counter()
                tokens, ang, _ = _boxes_tokens(read_screen(img, eng), deskew=False)
                tokens = drop_chrome(tokens, img.shape[1], img.shape[0])
                mark_colours(img, tokens)
            else:
                img, steps = prepare(p.image)
                tb = time.perf_counter()
                tokens, ang, _ = _ocr_tokens(img, eng)
            info["seconds_preprocess"] = round(tb - ta, 3)
            info["seconds_ocr"] = round(time.perf_counter() - tb, 3)
            turned = 0
            if not screen and not find_tables(tokens)[0]:
                # no table header: maybe a sideways or upside-down page without EXIF orientation
                for k in _turn_candidates(tokens):
                    t2, a2, _ = _ocr_tokens(_rot90(img, k), eng)
                    if find_tables(t2)[0]:
                        tokens, ang, turned = t2, a2, 90 * k
                        img = _rot90(img, k)
                        break
            if turned:
                steps.append(f"rotate:{turned}")
            info.update(preprocess=steps, deskew_deg=round(ang * 57.29578, 2), size=[img.shape[1], img.shape[0]])
        else:
            tokens = p.tokens
            provenance.setdefault("text_layer", "pypdfium2")
        tl = time.perf_counter()
        tables, H, lines = find_tables(tokens)
        info["tables"] = len(tables)
        read_lines = getattr(eng, "read_lines", None) if p.image is not None else None
        if tables and read_lines is not None:
            info["cells_reread"] = reread_empty_cells(tables, H, img, ang, read_lines)
        fallback: list[RawRow] = []
        if not tables and screen:
            fallback = card_rows(lines)
        elif not tables:
            fallback = headerless_rows(lines, H)
            warnings.append(f"page {p.number}: no result table header found"
                            + (f"; {len(fallback)} rows read by analyte name (review)" if fallback else ""))
        top = tables[0].header_y if tables else None
        spans = [(t.header_y - 0.5 * H, t.body_bottom + 0.5 * H) for t in tables]
        h, c = extract_header(lines, top, spans)
        if screen:
            # the report name, hospital and patient line of a result screen carry no labels
            body_top = top if top is not None else min((r.bbox()[1] for r in fallback), default=None)
            sh = screen_header(lines, body_top)
            h["title"], h["hospital"] = sh["title"], sh["hospital"]
            for field_name in ("name", "sex", "age"):
                if h.get(field_name) is None:
                    h[field_name] = sh[field_name]
        for k, v in h.items():
            if header.get(k) is None and v is not None:
                header[k] = v
                if k in c:
                    hconf[k] = round(c[k], 4)
        for table in tables:
            ordered = sorted(table.rows, key=lambda r: (r.group, r.cy))
            for raw in ordered:
                row = finalize_row(raw, len(results) + 1, p.number)
                if row is not None:
                    row.seq = len(results) + 1
                    results.append(row)
        for raw in fallback:
            row = finalize_row(raw, len(results) + 1, p.number)
            if row is not None:
                if not screen:
                    row.needs_review = True
                    row.review_reasons.append("no table header: columns inferred from content")
                results.append(row)
        info["seconds_layout"] = round(time.perf_counter() - tl, 3)
        page_info.append(info)
    for r in results:
        for reason in r.review_reasons:
            if "disagrees" in reason and r.flag_printed:
                warnings.append(f"row {r.seq} {r.name}: {reason}")
    review = any(r.needs_review for r in results) or not results
    missing_hdr = [k for k in ("name", "reported_at") if header.get(k) is None]
    if missing_hdr:
        warnings.append("header fields not found: " + ", ".join(missing_hdr))
    return LabReport(header=header, results=results, pages=len(pages),
                     source={"format": fmt, "filename_hint": filename_hint, "pages": page_info,
                             "seconds": round(time.perf_counter() - t0, 3)},
                     needs_review=review, warnings=warnings, provenance=provenance, header_confidence=hconf)
