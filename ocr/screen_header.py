"""Header fields that a result screen shows without labels: the report name, the hospital, the patient line.

Owns: on a screenshot (phone chrome already removed), the report name (the first plain text line of the patient
card, without its status pill), the hospital (only a line that names one: a screen that shows none has none), and
the large patient line `王*明  男  45岁` (the name kept as shown, masks included). Labelled fields (`科室：…`) are read
by the pipeline's label reader; this module never overrides one it found, and never reads result rows.
"""
from __future__ import annotations

import re
import statistics

from .inputs import Token
from .parse import norm_age, norm_text

_PILL = re.compile(r"^(已审核|已完成|已出报告|已报告|已出|已发布|已签收|已检验|审核|完成|正常|异常|已确认|查看)$")
_HOSPITAL = re.compile(r"(医院|卫生院|卫生服务中心|医学中心|诊所|保健院|医学院|门诊部|检验所|检验中心|体检中心)")
_LABELISH = re.compile(r"[:：]|(姓名|性别|年龄|科室|床号|样本|标本|条码|医生|医师|诊断|时间|日期|卡号|患者|就诊人|病历|"
                       r"共\d+项|结果|项目|明细)")
_NAME_TOKEN = re.compile(r"[\u4e00-\u9fff][\u4e00-\u9fff*＊]{0,5}")
_PATIENT_ONE = re.compile(r"^(?P<name>[\u4e00-\u9fff][\u4e00-\u9fff*＊]{0,5})(?P<sex>男|女)(?P<age>\d{1,3})岁?$")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def _plain(ln: list[Token]) -> list[Token]:
    return [t for t in ln if not _PILL.match(t.text.strip())]


def screen_header(lines: list[list[Token]], body_top: float | None) -> dict[str, str | None]:
    """{'title', 'hospital', 'name', 'sex', 'age'} read from the lines above the results (None when not shown)."""
    out: dict[str, str | None] = {"title": None, "hospital": None, "name": None, "sex": None, "age": None}
    above = [ln for ln in lines if body_top is None or statistics.median(t.cy for t in ln) < body_top]
    for ln in above:
        for t in ln:
            if out["hospital"] is None and _HOSPITAL.search(t.text) and not _LABELISH.search(t.text):
                out["hospital"] = norm_text(t.text)
    for ln in above:
        toks = _plain(ln)
        if not toks:
            continue
        joined = "".join(t.text for t in toks).replace(" ", "")
        if out["name"] is None:
            # the name in a box of its own (a sex icon read as a character may sit before 男/女), else one box
            first = toks[0].text.strip()
            rest = "".join(t.text for t in toks[1:])
            sm = re.search(r"(男|女)", rest)
            am = re.search(r"(\d{1,3})\s*岁?", rest)
            if _NAME_TOKEN.fullmatch(first) and sm and am and not _LABELISH.search(first):
                out.update(name=first, sex=sm.group(1), age=norm_age(am.group(1)))
                continue
            m = _PATIENT_ONE.match(joined)
            if m:
                out.update(name=m.group("name"), sex=m.group("sex"), age=norm_age(m.group("age")))
                continue
        if out["title"] is None:
            t0 = max(toks, key=lambda t: t.h)
            text = t0.text.strip()
            if (_CJK.search(text) and not _HOSPITAL.search(text) and not _LABELISH.search(text)
                    and 2 <= len(text) <= 24 and not re.search(r"\d{3,}", text)):
                out["title"] = norm_text(text)
    return out
