"""Synthetic lab-sheet generator for the OCR tests (no dev-set files are used).

Images: drawn with Pillow. When a CJK font is installed (`fc-list :lang=zh`), sheets use Chinese headers and
analyte names; otherwise (the default on this project's machines) they use English header keywords and printed
analyte codes with DejaVu Sans, which the extractor supports as well.
Digital PDFs: written by hand with the non-embedded `STSong-Light` CID font (UniGB-UCS2-H), as many LIS exports
are, so Chinese text needs no font file at all.
"""
from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import dataclass

ROWS = [  # code, chinese name, value, unit, ref text, low, high, flag
    ("WBC", "白细胞计数", "11.32", "10^9/L", "3.5-9.5", 3.5, 9.5, "H"),
    ("RBC", "红细胞计数", "4.52", "10^12/L", "3.8-5.1", 3.8, 5.1, None),
    ("HGB", "血红蛋白", "98", "g/L", "115-150", 115, 150, "L"),
    ("PLT", "血小板计数", "215", "10^9/L", "125-350", 125, 350, None),
    ("CREA", "肌酐", "118", "μmol/L", "41-81", 41, 81, "H"),
    ("GLU", "葡萄糖", "5.15", "mmol/L", "3.90-6.10", 3.9, 6.1, None),
    ("TC", "总胆固醇", "4.08", "mmol/L", "<5.20", None, 5.2, None),
    ("HDL-C", "高密度脂蛋白胆固醇", "0.92", "mmol/L", ">1.04", 1.04, None, "L"),
    ("K", "钾", "4.97", "mmol/L", "3.50-5.30", 3.5, 5.3, None),
    ("ALT", "丙氨酸氨基转移酶", "65", "U/L", "7-40", 7, 40, "H"),
]


@dataclass
class Sheet:
    data: bytes
    rows: list
    header: dict


def cjk_font_path() -> str | None:
    if not shutil.which("fc-list"):
        return None
    try:
        out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        p = line.split(":")[0].strip()
        if p.endswith((".ttf", ".ttc", ".otf")):
            return p
    return None


def _font(size: int, cjk: str | None):
    from PIL import ImageFont

    if cjk:
        return ImageFont.truetype(cjk, size)
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def image_sheet(rows=ROWS, *, fmt: str = "PNG", rotate: float = 0.0, width: int = 1240, two_tables: bool = False,
                flags_glued: bool = False, seed: int = 0) -> Sheet:
    """A lab sheet image (A4 at ~150 dpi by default)."""
    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    cjk = cjk_font_path()
    h = int(width * 1.414)
    img = Image.new("RGB", (width, h), "white")
    d = ImageDraw.Draw(img)
    f = _font(max(14, width // 52), cjk)
    ft = _font(max(20, width // 34), cjk)
    if cjk:
        d.text((width * 0.35, 40), "测试市人民医院", font=ft, fill="black")
        d.text((width * 0.35, 90), "血常规检验报告单", font=ft, fill="black")
        d.text((60, 160), "姓名：张三", font=f, fill="black")
        d.text((width * 0.4, 160), "性别：男", font=f, fill="black")
        d.text((width * 0.7, 160), "年龄：45岁", font=f, fill="black")
        heads = ["项目名称", "结果", "提示", "单位", "参考范围"]
    else:
        heads = ["Code", "Result", "Flag", "Unit", "Reference"]
    halves = [rows[: (len(rows) + 1) // 2], rows[(len(rows) + 1) // 2:]] if two_tables else [rows]
    ncol = len(halves)
    colw = (width - 120) / ncol
    xs_rel = [0.0, 0.30, 0.47, 0.58, 0.77]
    # each column starts a space after the widest cell of the one before: printed cells never overlap (a real
    # sheet's do not); with CJK names two tables side by side get a smaller font so that they fit
    if two_tables and cjk:
        f = _font(max(14, width // 70), cjk)
    glyphs = {"H": "↑", "L": "↓", None: ""}
    cells = [[r[1] + f"({r[0]})" if cjk else r[0] for r in rows],
             [r[2] + (glyphs[r[7]] if flags_glued else "") for r in rows], [glyphs[r[7]] for r in rows],
             [r[3] for r in rows], [r[4] for r in rows]]
    for k in range(1, len(xs_rel)):
        widest = max([d.textlength(c, font=f) for c in cells[k - 1]] + [d.textlength(heads[k - 1], font=f)])
        xs_rel[k] = max(xs_rel[k], xs_rel[k - 1] + (widest + 1.0 * f.size) / colw)
    y0 = 240
    lh = int(f.size * 2.0)
    for gi, part in enumerate(halves):
        gx = 60 + gi * colw
        for k, hd in enumerate(heads):
            d.text((gx + xs_rel[k] * colw, y0), hd, font=f, fill="black")
        d.line([(gx, y0 + lh * 0.8), (gx + colw - 20, y0 + lh * 0.8)], fill="black", width=2)
        for i, (code, cname, val, unit, ref, _lo, _hi, flag) in enumerate(part):
            y = y0 + lh * (i + 1)
            name = cname + f"({code})" if cjk else code
            glyph = {"H": "↑", "L": "↓", None: ""}[flag]
            d.text((gx + xs_rel[0] * colw, y), name, font=f, fill="black")
            d.text((gx + xs_rel[1] * colw, y), val + (glyph if flags_glued else ""), font=f, fill="black")
            if not flags_glued:
                d.text((gx + xs_rel[2] * colw, y), glyph, font=f, fill="black")
            d.text((gx + xs_rel[3] * colw, y), unit, font=f, fill="black")
            d.text((gx + xs_rel[4] * colw, y), ref, font=f, fill="black")
    if rotate:
        img = img.rotate(rotate, resample=Image.BICUBIC, expand=False, fillcolor="white")
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    del rnd
    return Sheet(buf.getvalue(), rows, {"name": "张三", "sex": "男", "age": "45岁"} if cjk else {})


# ----------------------------------------------------------------------------- digital PDF (STSong-Light CID)
def _u(s: str) -> bytes:
    return b"<" + s.encode("utf-16-be").hex().upper().encode() + b">"


QUAL_ROWS = [  # urine dry chemistry: qualitative results against a negative reference
    ("PRO", "尿蛋白", "阳性(++)", None, "阴性", None, None, "H"),
    ("GLU", "尿糖", "-", None, "-", None, None, None),
    ("KET", "酮体", "阴性(-)", None, "阴性(-)", None, None, None),
    ("BLD", "潜血", "±", None, "阴性", None, None, "H"),
    ("pH", "酸碱度", "6.0", None, "4.5-8.0", 4.5, 8.0, None),
]

DEFAULT_COLUMNS = ("seq", "name", "result", "flag", "ref", "unit")
HEAD_WORDS = {"seq": "序号", "name": "检验项目", "code": "缩写", "result": "结果", "flag": "提示", "ref": "参考区间",
              "unit": "单位", "method": "检测方法"}


def digital_pdf(rows=ROWS, header: dict | None = None, *, columns=DEFAULT_COLUMNS, two_tables: bool = False,
                glued_flags: bool = False, name_with_code: bool = True, spaced_header: bool = False) -> Sheet:
    """A born-digital PDF with a text layer (no font file needed: non-embedded STSong-Light).

    columns: order of the result table's columns, from seq/name/code/result/flag/ref/unit/method."""
    import pikepdf

    header = header or {"hospital": "测试市人民医院", "title": "生化检验报告单", "name": "李四", "sex": "女",
                        "age": "38岁", "department": "内科", "bed": "12", "specimen": "血清",
                        "sample_id": "202401010001", "doctor": "王五", "collected_at": "2024-01-01 08:30",
                        "received_at": "2024-01-01 09:10", "reported_at": "2024-01-01 11:47",
                        "patient_id": "12345678", "diagnosis": "体检"}
    ops = []

    def text(x, y, s, size=10):
        ops.append(b"BT /F1 %d Tf 1 0 0 1 %.2f %.2f Tm " % (size, x, y) + _u(s) + b" Tj ET")

    text(230, 790, header["hospital"], 16)
    text(240, 765, header["title"], 14)
    text(40, 735, "姓名：" + header["name"])
    text(220, 735, "性别：" + header["sex"])
    text(400, 735, "年龄：" + header["age"])
    text(40, 718, "科室：" + header["department"])
    text(220, 718, "床号：" + header["bed"] + "床")
    text(400, 718, "标本类型：" + header["specimen"])
    text(40, 701, "样本编号：" + header["sample_id"])
    text(220, 701, "送检医生：" + header["doctor"])
    text(400, 701, "临床诊断：" + header["diagnosis"])
    text(40, 684, "门诊号：" + header["patient_id"])
    widths = {"seq": 25, "name": 140 if not two_tables else 130, "code": 45, "result": 50, "flag": 25, "ref": 65,
              "unit": 50, "method": 50}
    cols = [c for c in columns if not (c == "flag" and glued_flags)]
    halves = [rows[: (len(rows) + 1) // 2], rows[(len(rows) + 1) // 2:]] if two_tables else [rows]
    gx = 30
    y_end = 0
    for part in halves:
        xs, x = {}, gx
        for c in cols:
            xs[c] = x
            x += widths[c] if not two_tables else widths[c] * 0.85
        for c in cols:
            hd = HEAD_WORDS[c]
            text(xs[c], 655, " ".join(hd) if spaced_header else hd)
        y = 638
        for i, (code, cname, val, unit, ref, _lo, _hi, flag) in enumerate(part, 1):
            glyph = {"H": "↑", "L": "↓", None: ""}[flag]
            cells = {"seq": str(i), "name": f"{cname}({code})" if name_with_code and "code" not in cols else cname,
                     "code": code, "result": val + (glyph if glued_flags else ""), "flag": glyph, "ref": ref,
                     "unit": unit or "", "method": "速率法"}
            for c in cols:
                if cells[c]:
                    text(xs[c], y, cells[c], 8 if two_tables else 10)
            y -= 17
        y_end = min(y_end, y) if y_end else y
        gx = x + 10
    y = y_end - 20
    text(40, y, "采集时间：" + header["collected_at"])
    text(220, y, "接收时间：" + header["received_at"])
    text(400, y, "报告时间：" + header["reported_at"])
    text(40, y - 20, "检验者：赵六")

    pdf = pikepdf.new()
    font = pikepdf.Dictionary(
        Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type0, BaseFont=pikepdf.Name("/STSong-Light"),
        Encoding=pikepdf.Name("/UniGB-UCS2-H"),
        DescendantFonts=[pdf.make_indirect(pikepdf.Dictionary(
            Type=pikepdf.Name.Font, Subtype=pikepdf.Name.CIDFontType0, BaseFont=pikepdf.Name("/STSong-Light"),
            CIDSystemInfo=pikepdf.Dictionary(Registry=pikepdf.String("Adobe"), Ordering=pikepdf.String("GB1"),
                                              Supplement=4),
            FontDescriptor=pdf.make_indirect(pikepdf.Dictionary(
                Type=pikepdf.Name.FontDescriptor, FontName=pikepdf.Name("/STSong-Light"), Flags=6,
                FontBBox=[-25, -254, 1000, 880], ItalicAngle=0, Ascent=880, Descent=-120, CapHeight=880,
                StemV=93)),
            DW=1000, W=[1, 95, 500]))])
    page = pikepdf.Dictionary(Type=pikepdf.Name.Page, MediaBox=[0, 0, 595, 842],
                              Resources=pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=pdf.make_indirect(font))),
                              Contents=pdf.make_stream(b"\n".join(ops)))
    pdf.pages.append(pikepdf.Page(page))
    buf = io.BytesIO()
    pdf.save(buf)
    return Sheet(buf.getvalue(), rows, header)


# ----------------------------------------------------------------------------- hostile inputs
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny IDAT: never allocates the pixels."""
    import struct
    import zlib

    def chunk(typ, data):
        return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def many_page_pdf(n: int) -> bytes:
    import pikepdf

    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595, 842))
    first = pdf.pages[0]
    for _ in range(n - 1):
        pdf.pages.append(first)
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def encrypted_pdf() -> bytes:
    import pikepdf

    pdf = pikepdf.new()
    pdf.add_blank_page()
    buf = io.BytesIO()
    pdf.save(buf, encryption=pikepdf.Encryption(owner="owner-secret", user="user-secret", R=6))
    return buf.getvalue()


def scanned_pdf(sheet: Sheet) -> bytes:
    """A PDF holding only the page image (no text layer)."""
    from PIL import Image

    im = Image.open(io.BytesIO(sheet.data)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "PDF", resolution=150)
    return buf.getvalue()


def photo_of(sheet: Sheet, *, long_side: int = 2800, keystone: float = 0.06, quality: int = 80) -> bytes:
    """A phone photo of the sheet: the page lying on a darker desk, keystone perspective, JPEG; larger than the
    OCR working size so the pipeline has to find the page, warp it and scale it down."""
    import cv2
    import numpy as np
    from PIL import Image

    page = cv2.cvtColor(np.asarray(Image.open(io.BytesIO(sheet.data)).convert("RGB")), cv2.COLOR_RGB2BGR)
    ph, pw = page.shape[:2]
    H = long_side
    W = int(long_side * 0.75)
    # the page covers ~70 % of the frame's height, its top edge narrower than its bottom (camera tilted)
    top, bottom = 0.14 * H, 0.86 * H
    half_b = 0.5 * (bottom - top) * pw / ph
    half_t = half_b * (1 - 2 * keystone)
    cx = W / 2
    dst = np.float32([[cx - half_t, top], [cx + half_t, top], [cx + half_b, bottom], [cx - half_b, bottom]])
    src = np.float32([[0, 0], [pw - 1, 0], [pw - 1, ph - 1], [0, ph - 1]])
    m = cv2.getPerspectiveTransform(src, dst)
    desk = np.full((H, W, 3), (60, 80, 100), np.uint8)
    out = cv2.warpPerspective(page, m, (W, H), dst=desk, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


# ----------------------------------------------------------------------------- phone screenshots
LONG_ROWS = ROWS + [
    ("NEUT%", "中性粒细胞百分比", "76.4", "%", "40.0-75.0", 40.0, 75.0, "H"),
    ("LYMPH%", "淋巴细胞百分比", "18.2", "%", "20.0-50.0", 20.0, 50.0, "L"),
    ("MONO%", "单核细胞百分比", "5.1", "%", "3.0-10.0", 3.0, 10.0, None),
    ("HCT", "红细胞压积", "41.2", "%", "35.0-45.0", 35.0, 45.0, None),
    ("MCV", "平均红细胞体积", "91.3", "fL", "82.0-100.0", 82.0, 100.0, None),
    ("MCH", "平均红细胞血红蛋白量", "30.1", "pg", "27.0-34.0", 27.0, 34.0, None),
    ("MCHC", "平均红细胞血红蛋白浓度", "330", "g/L", "316-354", 316, 354, None),
    ("MPV", "平均血小板体积", "13.6", "fL", "7.4-12.5", 7.4, 12.5, "H"),
    ("UREA", "尿素", "6.21", "mmol/L", "3.1-8.0", 3.1, 8.0, None),
    ("UA", "尿酸", "462", "μmol/L", "208-428", 208, 428, "H"),
    ("TG", "甘油三酯", "1.35", "mmol/L", "0.56-1.70", 0.56, 1.70, None),
    ("Na", "钠", "139.2", "mmol/L", "137.0-147.0", 137.0, 147.0, None),
]

SCREEN_HEADER = {"title": "血常规全套", "hospital": "测试市人民医院", "name": "张*三", "sex": "男", "age": "45岁",
                 "department": "内分泌科", "sample_id": "20240315123", "reported_at": "2024-03-15 11:47"}


def screenshot(rows=ROWS, *, width: int = 1080, dark: bool = False, screens: float | None = None,
               fmt: str = "PNG", table: bool = False, watermark: bool = False) -> Sheet:
    """A hospital app's result page saved as a phone screenshot: status bar, title bar, a patient card, one card
    per analyte (name left, value right in red/blue with ↑/↓ when abnormal, a grey '参考区间 … 单位 …' line under it),
    a footer and a tab bar. `screens` > 1 makes a long (stitched) screenshot of that many screen heights; by default
    the page is as tall as its content needs, at least one screen (2.17 x width). With `table`, the results are a
    narrow four-column table instead (项目 / 结果 / 参考值 / 单位, the abbreviation in grey under the name, the value
    centred between the two lines). With `watermark`, faint slanted text is laid over the whole page."""
    from PIL import Image, ImageDraw

    cjk = cjk_font_path()
    px = width / 390.0                                  # device pixels per point (iPhone-like: 390 pt wide)
    f_small, f_body, f_big = (_font(int(s * px), cjk) for s in (12, 16, 20))
    bg, card, ink, grey = ((0, 0, 0), (28, 28, 30), (235, 235, 240), (150, 150, 155)) if dark else \
        ((242, 244, 247), (255, 255, 255), (25, 25, 25), (140, 140, 145))
    red, blue, brand = (225, 50, 45), (40, 90, 220), (40, 140, 90)
    card_h = int(64 * px)
    top = int(110 * px)
    content = top + int(230 * px) + len(rows) * (card_h + int(10 * px)) + int(170 * px)
    height = max(int(2.17 * width), content, int((screens or 0) * 2.17 * width))
    img = Image.new("RGB", (width, height), bg)
    d = ImageDraw.Draw(img)
    lbl = (lambda zh, en: zh) if cjk else (lambda zh, en: en)
    # status bar and title bar (phone chrome: never part of the report)
    d.text((int(24 * px), int(16 * px)), "9:41", font=f_body, fill=ink)
    d.text((width - int(90 * px), int(16 * px)), "5G 87%", font=f_small, fill=ink)
    d.text((int(14 * px), int(58 * px)), "<", font=f_big, fill=ink)
    title_bar = lbl("报告详情", "Report")
    d.text(((width - d.textlength(title_bar, font=f_big)) / 2, int(58 * px)), title_bar, font=f_big, fill=ink)
    d.text((width - int(48 * px), int(58 * px)), "···", font=f_big, fill=ink)
    # patient card
    x0, x1 = int(16 * px), width - int(16 * px)
    d.rounded_rectangle([x0, top, x1, top + int(210 * px)], radius=int(10 * px), fill=card)
    y = top + int(14 * px)
    d.text((x0 + int(14 * px), y), lbl(SCREEN_HEADER["title"], "CBC"), font=f_big, fill=ink)
    d.text((x1 - int(70 * px), y + int(3 * px)), lbl("已审核", "Done"), font=f_small, fill=brand)
    y += int(32 * px)
    d.text((x0 + int(14 * px), y), lbl(SCREEN_HEADER["hospital"], "Test Hospital"), font=f_small, fill=grey)
    y += int(28 * px)
    d.text((x0 + int(14 * px), y), lbl("张*三  男  45岁", "Zhang M 45"), font=f_big, fill=ink)
    y += int(36 * px)
    for zh, en in (("科室：内分泌科", "Dept: 2"), ("样本号：20240315123", "Sample: 20240315123"),
                   ("报告时间：2024-03-15 11:47", "Reported: 2024-03-15 11:47")):
        d.text((x0 + int(14 * px), y), lbl(zh, en), font=f_body, fill=grey)
        y += int(27 * px)
    # results
    y = top + int(230 * px)
    d.text((x0, y), lbl("检验结果", "Results"), font=f_big, fill=ink)
    y += int(40 * px)
    if table and cjk:
        y = _screen_table(d, rows, x0, x1, y, px, (f_small, f_body), (card, ink, grey, red, blue))
    for code, cname, val, unit, ref, _lo, _hi, flag in ([] if table and cjk else rows):
        d.rounded_rectangle([x0, y, x1, y + card_h], radius=int(8 * px), fill=card)
        d.text((x0 + int(14 * px), y + int(10 * px)), cname if cjk else code, font=f_body, fill=ink)
        colour = {"H": red, "L": blue, None: ink}[flag]
        shown = val + {"H": " ↑", "L": " ↓", None: ""}[flag]
        d.text((x1 - int(14 * px) - d.textlength(shown, font=f_body), y + int(10 * px)), shown, font=f_body,
               fill=colour)
        grey_line = (f"{code}  参考区间：{ref}  单位：{unit}" if cjk else f"Ref {ref}  {unit}")
        d.text((x0 + int(14 * px), y + int(38 * px)), grey_line, font=f_small, fill=grey)
        y += card_h + int(10 * px)
    y += int(10 * px)
    d.text((x0, y), lbl("检验者：李四  审核者：王五", "Checked by: Li"), font=f_small, fill=grey)
    d.text((x0, y + int(24 * px)), lbl("温馨提示：本报告仅供参考。", "Note: for reference only."), font=f_small,
           fill=grey)
    if watermark:
        img = _watermarked(img, lbl("张*三 仅供参考", "FOR REFERENCE"), _font(int(18 * px), cjk))
        d = ImageDraw.Draw(img)
    # tab bar
    tb = height - int(70 * px)
    d.rectangle([0, tb, width, height], fill=card)
    for k, tab in enumerate(lbl("首页 报告 我的", "Home Reports Me").split()):
        d.text((int((k + 0.4) * width / 3), tb + int(16 * px)), tab, font=f_small, fill=grey)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    header = dict(SCREEN_HEADER) if cjk else {}
    return Sheet(buf.getvalue(), list(rows), header)


def _watermarked(img, text: str, font):
    """The page with `text` repeated over it at ~8 % opacity, slanted by 25 degrees."""
    from PIL import Image, ImageDraw

    w, h = img.size
    layer = Image.new("RGBA", (w * 2, h * 2), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    step_x, step_y = int(font.size * 9), int(font.size * 6)
    for y in range(0, h * 2, step_y):
        for x in range(0, w * 2, step_x):
            d.text((x, y), text, font=font, fill=(128, 128, 128, 22))
    layer = layer.rotate(25, resample=Image.BICUBIC).crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def _screen_table(d, rows, x0: int, x1: int, y: int, px: float, fonts, colours) -> int:
    """The results as a narrow four-column table; returns the y under it."""
    f_small, f_body = fonts
    card, ink, grey, red, blue = colours
    xs = [x0 + int(12 * px), x0 + int(150 * px), x0 + int(230 * px), x0 + int(300 * px)]
    row_h = int(52 * px)
    d.rectangle([x0, y, x1, y + int(34 * px)], fill=card)
    for x, head in zip(xs, ("项目", "结果", "参考值", "单位"), strict=False):
        d.text((x, y + int(8 * px)), head, font=f_small, fill=grey)
    y += int(40 * px)
    for code, cname, val, unit, ref, _lo, _hi, flag in rows:
        d.rectangle([x0, y, x1, y + row_h], fill=card)
        d.text((xs[0], y + int(6 * px)), cname, font=f_small, fill=ink)
        d.text((xs[0], y + int(26 * px)), code, font=f_small, fill=grey)
        colour = {"H": red, "L": blue, None: ink}[flag]
        d.text((xs[1], y + int(16 * px)), val + {"H": "↑", "L": "↓", None: ""}[flag], font=f_body, fill=colour)
        d.text((xs[2], y + int(17 * px)), ref, font=f_small, fill=ink)
        d.text((xs[3], y + int(17 * px)), unit, font=f_small, fill=grey)
        y += row_h + int(2 * px)
    return y


def long_screenshot(rows=LONG_ROWS, *, width: int = 1080, dark: bool = False) -> Sheet:
    """A long (stitched) screenshot about three screens tall: more result cards than one screen holds."""
    return screenshot(rows, width=width, dark=dark, screens=2.6)
