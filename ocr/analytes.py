"""Analyte dictionary: Chinese names, aliases and abbreviations -> canonical code (+ LOINC where known).

Maintained table; canonical codes follow the dev-set convention (`CREA`, `UREA`, `NEUT%`, ...).
Each entry: code, LOINC (or None), default unit(s), plausible value range (for review checks), names, abbreviations.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Analyte:
    code: str
    loinc: str | None
    units: tuple[str | None, ...]
    plausible: tuple[float, float] | None
    names: tuple[str, ...]
    abbrevs: tuple[str, ...] = ()
    qualitative: bool = False


_A = Analyte
TABLE: list[Analyte] = [
    # ---- complete blood count 血常规
    _A("WBC", "6690-2", ("10^9/L", "/μL"), (0.1, 200), ("白细胞计数", "白细胞", "白细胞数目", "白细胞数", "白细胞总数",
                                                        "尿白细胞", "白细胞(镜检)", "白细胞镜检"), ("WBC", "LEU#")),
    _A("RBC", "789-8", ("10^12/L", "/μL"), (0.5, 10), ("红细胞计数", "红细胞", "红细胞数目", "红细胞数", "尿红细胞",
                                                     "红细胞(镜检)", "红细胞镜检"), ("RBC",)),
    _A("HGB", "718-7", ("g/L",), (20, 260), ("血红蛋白", "血红蛋白量", "血红蛋白浓度", "血色素"), ("HGB", "Hb", "HB")),
    _A("HCT", "4544-3", ("%", "L/L"), (5, 75), ("红细胞压积", "红细胞比积", "红细胞比容", "血细胞比容"), ("HCT",)),
    _A("MCV", "787-2", ("fL",), (40, 150), ("平均红细胞体积",), ("MCV",)),
    _A("MCH", "785-6", ("pg",), (10, 50), ("平均红细胞血红蛋白量", "平均红细胞血红蛋白含量", "平均血红蛋白量",
                                          "平均血红蛋白含量"), ("MCH",)),
    _A("MCHC", "786-4", ("g/L",), (200, 450), ("平均红细胞血红蛋白浓度", "平均血红蛋白浓度"), ("MCHC",)),
    _A("RDW-CV", "788-0", ("%",), (5, 40), ("红细胞分布宽度-CV", "红细胞体积分布宽度", "红细胞分布宽度变异系数",
                                          "红细胞分布宽度CV", "红细胞分布宽度"), ("RDW-CV", "RDW", "RDWCV")),
    _A("RDW-SD", "21000-5", ("fL",), (20, 100), ("红细胞分布宽度-SD", "红细胞分布宽度标准差", "红细胞分布宽度SD"),
       ("RDW-SD", "RDWSD")),
    _A("PLT", "777-3", ("10^9/L",), (1, 2000), ("血小板计数", "血小板", "血小板数目", "血小板数"), ("PLT",)),
    _A("MPV", "32623-1", ("fL",), (3, 20), ("平均血小板体积",), ("MPV",)),
    _A("PDW", "32207-3", ("fL", "%"), (3, 40), ("血小板分布宽度", "血小板体积分布宽度"), ("PDW",)),
    _A("PCT", "51637-7", ("%",), (0.01, 2), ("血小板压积", "血小板比积", "血小板比容"), ("PCT",)),
    _A("P-LCR", "48386-7", ("%",), (1, 80), ("大型血小板比率", "大血小板比率", "大血小板比例"), ("P-LCR", "PLCR")),
    _A("NEUT%", "770-8", ("%",), (0, 100), ("中性粒细胞百分比", "中性粒细胞百分率", "中性粒细胞比率", "中性粒细胞比例",
                                          "中性粒细胞%"), ("NEUT%", "NE%", "GRAN%", "NEU%", "N%")),
    _A("LYMPH%", "736-9", ("%",), (0, 100), ("淋巴细胞百分比", "淋巴细胞百分率", "淋巴细胞比率", "淋巴细胞比例",
                                           "淋巴细胞%"), ("LYMPH%", "LY%", "LYM%", "L%")),
    _A("MONO%", "5905-5", ("%",), (0, 100), ("单核细胞百分比", "单核细胞百分率", "单核细胞比率", "单核细胞比例",
                                           "单核细胞%"), ("MONO%", "MO%", "MON%", "M%")),
    _A("EO%", "713-8", ("%",), (0, 100), ("嗜酸性粒细胞百分比", "嗜酸性粒细胞百分率", "嗜酸细胞比率", "嗜酸性粒细胞比率",
                                        "嗜酸性粒细胞比例", "嗜酸细胞百分比"), ("EO%", "EOS%", "E%")),
    _A("BASO%", "706-2", ("%",), (0, 100), ("嗜碱性粒细胞百分比", "嗜碱性粒细胞百分率", "嗜碱细胞比率", "嗜碱性粒细胞比率",
                                          "嗜碱性粒细胞比例", "嗜碱细胞百分比"), ("BASO%", "BA%", "BAS%", "B%")),
    _A("NEUT#", "751-8", ("10^9/L",), (0, 150), ("中性粒细胞绝对值", "中性粒细胞计数", "中性粒细胞数", "中性粒细胞数目"),
       ("NEUT#", "NE#", "GRAN#", "NEU#", "N#")),
    _A("LYMPH#", "731-0", ("10^9/L",), (0, 100), ("淋巴细胞绝对值", "淋巴细胞计数", "淋巴细胞数", "淋巴细胞数目"),
       ("LYMPH#", "LY#", "LYM#", "L#")),
    _A("MONO#", "742-7", ("10^9/L",), (0, 20), ("单核细胞绝对值", "单核细胞计数", "单核细胞数", "单核细胞数目"),
       ("MONO#", "MO#", "MON#", "M#")),
    _A("EO#", "711-2", ("10^9/L",), (0, 20), ("嗜酸性粒细胞绝对值", "嗜酸性粒细胞计数", "嗜酸性粒细胞数", "嗜酸细胞计数",
                                            "嗜酸细胞绝对值"), ("EO#", "EOS#", "E#")),
    _A("BASO#", "704-7", ("10^9/L",), (0, 5), ("嗜碱性粒细胞绝对值", "嗜碱性粒细胞计数", "嗜碱性粒细胞数", "嗜碱细胞计数",
                                             "嗜碱细胞绝对值"), ("BASO#", "BA#", "BAS#", "B#")),
    # ---- liver 肝功能
    _A("ALT", "1742-6", ("U/L",), (0, 5000), ("丙氨酸氨基转移酶", "谷丙转氨酶", "丙氨酸转氨酶"), ("ALT", "GPT")),
    _A("AST", "1920-8", ("U/L",), (0, 5000), ("天门冬氨酸氨基转移酶", "天冬氨酸氨基转移酶", "谷草转氨酶", "天冬氨酸转氨酶"),
       ("AST", "GOT")),
    _A("GGT", "2324-2", ("U/L",), (0, 3000), ("γ-谷氨酰转移酶", "γ-谷氨酰基转移酶", "谷氨酰转肽酶", "γ-谷氨酰转肽酶",
                                            "谷氨酰转移酶", "谷氨酰基转移酶", "r-谷氨酰转移酶", "Y-谷氨酰转移酶"),
       ("GGT", "γ-GT", "Y-GT", "r-GT", "GGTP")),
    _A("ALP", "6768-6", ("U/L",), (0, 3000), ("碱性磷酸酶",), ("ALP", "AKP")),
    _A("TBIL", "1975-2", ("μmol/L",), (0, 800), ("总胆红素", "血清总胆红素"), ("TBIL", "T-BIL", "TB", "STB")),
    _A("DBIL", "1968-7", ("μmol/L",), (0, 600), ("直接胆红素", "结合胆红素"), ("DBIL", "D-BIL", "DB", "CB")),
    _A("IBIL", "1971-1", ("μmol/L",), (0, 600), ("间接胆红素", "非结合胆红素"), ("IBIL", "I-BIL", "IB", "UCB")),
    _A("TP", "2885-2", ("g/L",), (20, 150), ("总蛋白", "血清总蛋白"), ("TP",)),
    _A("ALB", "1751-7", ("g/L",), (5, 80), ("白蛋白", "血清白蛋白"), ("ALB",)),
    _A("GLB", "10834-0", ("g/L",), (5, 100), ("球蛋白",), ("GLB", "GLO")),
    _A("A/G", "1759-0", (None,), (0.1, 5), ("白球比", "白蛋白/球蛋白", "白/球比值", "白球比例", "白蛋白球蛋白比值",
                                          "白/球比"), ("A/G",)),
    _A("TBA", "14628-2", ("μmol/L",), (0, 500), ("总胆汁酸",), ("TBA",)),
    # ---- renal 肾功能
    _A("UREA", "3091-6", ("mmol/L",), (0.5, 80), ("尿素", "尿素氮", "血尿素氮", "血尿素"), ("UREA", "BUN", "UN")),
    _A("CREA", "14682-9", ("μmol/L",), (5, 3000), ("肌酐", "血肌酐", "血清肌酐"), ("CREA", "Cr", "CRE", "SCr", "CREA-S")),
    _A("UA", "14933-6", ("μmol/L",), (20, 2000), ("尿酸", "血尿酸"), ("UA", "URIC")),
    _A("CysC", "33863-2", ("mg/L",), (0.1, 10), ("胱抑素C", "半胱氨酸蛋白酶抑制剂C"), ("CysC", "Cys-C")),
    # ---- glucose / lipids
    _A("GLU", "14749-6", ("mmol/L", None), (0.5, 50), ("葡萄糖", "血糖", "空腹血糖", "空腹葡萄糖", "尿糖", "尿葡萄糖"),
       ("GLU", "FPG", "FBG")),
    _A("HbA1c", "4548-4", ("%",), (3, 20), ("糖化血红蛋白",), ("HbA1c", "GHb")),
    _A("TC", "14647-2", ("mmol/L",), (0.5, 25), ("总胆固醇", "胆固醇"), ("TC", "CHOL", "T-CHO")),
    _A("TG", "14927-8", ("mmol/L",), (0.1, 50), ("甘油三酯", "甘油三脂"), ("TG", "TRIG")),
    _A("HDL-C", "14646-4", ("mmol/L",), (0.1, 5), ("高密度脂蛋白胆固醇", "高密度脂蛋白", "高密度脂蛋白-胆固醇"),
       ("HDL-C", "HDL", "HDLC")),
    _A("LDL-C", "22748-8", ("mmol/L",), (0.1, 15), ("低密度脂蛋白胆固醇", "低密度脂蛋白", "低密度脂蛋白-胆固醇"),
       ("LDL-C", "LDL", "LDLC")),
    _A("ApoA1", "1869-7", ("g/L",), (0.1, 5), ("载脂蛋白AI", "载脂蛋白A1", "载脂蛋白A-I", "载脂蛋白A"),
       ("ApoA1", "APOA1", "Apo-A1", "ApoAI", "APOA-1")),
    _A("ApoB", "1884-6", ("g/L",), (0.1, 5), ("载脂蛋白B", "载脂蛋白B100"), ("ApoB", "APOB", "Apo-B")),
    _A("Lp(a)", "10835-7", ("mg/L",), (0, 3000), ("脂蛋白a", "脂蛋白(a)", "脂蛋白（a）"), ("Lp(a)", "LPA", "LP(A)")),
    # ---- electrolytes
    _A("K", "2823-3", ("mmol/L",), (1, 10), ("钾", "血清钾", "血钾"), ("K", "K+")),
    _A("Na", "2951-2", ("mmol/L",), (90, 200), ("钠", "血清钠", "血钠"), ("Na", "Na+")),
    _A("Cl", "2075-0", ("mmol/L",), (60, 150), ("氯", "血清氯", "血氯"), ("Cl", "Cl-")),
    _A("Ca", "2000-8", ("mmol/L",), (0.5, 5), ("钙", "血清钙", "血钙", "总钙"), ("Ca", "Ca2+")),
    _A("P", "2777-1", ("mmol/L",), (0.1, 5), ("磷", "无机磷", "血清磷"), ("P", "PHOS", "IP")),
    _A("Mg", "2601-3", ("mmol/L",), (0.1, 5), ("镁", "血清镁"), ("Mg",)),
    _A("CO2", "2028-9", ("mmol/L",), (5, 60), ("二氧化碳", "二氧化碳结合力", "总二氧化碳"), ("CO2", "TCO2", "CO2CP")),
    # ---- urine 尿常规
    _A("pH", "5803-2", (None,), (4, 10), ("酸碱度", "尿酸碱度", "尿pH"), ("pH", "PH")),
    _A("SG", "5811-5", (None,), (1.0, 1.1), ("比重", "尿比重"), ("SG",)),
    _A("PRO", "5804-0", (None,), None, ("蛋白质", "尿蛋白", "蛋白"), ("PRO",), True),
    _A("KET", "5797-6", (None,), None, ("酮体", "尿酮体"), ("KET",), True),
    _A("BLD", "5794-3", (None,), None, ("潜血", "隐血", "尿潜血", "尿隐血"), ("BLD", "ERY"), True),
    _A("BIL", "5770-3", (None,), None, ("胆红素", "尿胆红素"), ("BIL",), True),
    _A("URO", "5818-0", (None,), None, ("尿胆原",), ("URO", "UBG"), True),
    _A("NIT", "5802-4", (None,), None, ("亚硝酸盐",), ("NIT",), True),
    _A("LEU", "5799-2", (None,), None, ("白细胞酯酶", "白细胞(干化学)", "白细胞干化学", "尿白细胞酯酶"), ("LEU",), True),
    _A("EC", None, ("/μL",), (0, 1000), ("上皮细胞", "鳞状上皮细胞", "上皮细胞(镜检)"), ("EC", "SEC")),
    _A("CAST", None, ("/μL",), (0, 100), ("透明管型", "管型"), ("CAST",)),
    _A("BACT", None, ("/μL",), (0, 100000), ("细菌",), ("BACT", "BAC")),
    _A("VC", "5808-1", (None,), None, ("维生素C", "抗坏血酸"), ("VC",), True),
    _A("CRP", "1988-5", ("mg/L",), (0, 500), ("C反应蛋白", "超敏C反应蛋白"), ("CRP", "hs-CRP")),
]


def fold(s: str) -> str:
    """Normalise for lookups: NFKC, no spaces, traditional->simplified for the handful that matter, case kept."""
    s = unicodedata.normalize("NFKC", s or "").replace("µ", "μ")
    s = re.sub(r"\s+", "", s)
    return s.translate(_T2S)


_T2S = str.maketrans({"測": "测", "驗": "验", "結": "结", "項": "项", "範": "范", "圍": "围", "單": "单", "區": "区",
                      "間": "间", "參": "参", "號": "号", "標": "标", "誌": "志", "檢": "检", "試": "试", "醫": "医",
                      "報": "报", "紅": "红", "細": "细", "膽": "胆", "蛋": "蛋", "鈉": "钠", "鉀": "钾", "氯": "氯",
                      "鈣": "钙", "糖": "糖", "齡": "龄", "別": "别", "診": "诊", "時": "时", "種": "种", "類": "类",
                      "異": "异", "常": "常", "審": "审", "核": "核", "簡": "简", "稱": "称", "穀": "谷", "轉": "转",
                      "氨": "氨", "鹼": "碱", "總": "总", "脂": "脂", "質": "质", "體": "体", "積": "积",
                      "壓": "压", "數": "数", "絕": "绝", "對": "对", "值": "值", "寬": "宽", "度": "度"})


def _key(s: str) -> str:
    s = fold(s).replace("（", "(").replace("）", ")")
    return s


BY_NAME: dict[str, Analyte] = {}
BY_ABBR: dict[str, Analyte] = {}
BY_CODE: dict[str, Analyte] = {}
for _a in TABLE:
    BY_CODE[_a.code] = _a
    for _n in _a.names:
        BY_NAME.setdefault(_key(_n), _a)
    for _b in (_a.code,) + _a.abbrevs:
        BY_ABBR.setdefault(re.sub(r"[-_.·\s]", "", fold(_b).upper()), _a)


def _abbr_key(s: str) -> str:
    s = fold(s).upper()
    s = s.replace("Γ", "Γ")
    return re.sub(r"[-_.·\s]", "", s)


# OCR slips seen in abbreviations: letter O vs digit 0, l vs I vs 1, γ vs Y/r
_ABBR_SLIPS = [("0", "O"), ("1", "I"), ("L", "I"), ("Y", "Γ"), ("R", "Γ"), ("5", "S"), ("8", "B")]


@functools.lru_cache(maxsize=4096)
def lookup_abbr(s: str) -> Analyte | None:
    k = _abbr_key(s)
    if not k:
        return None
    if k in BY_ABBR:
        return BY_ABBR[k]
    for a, b in _ABBR_SLIPS:
        k2 = k.replace(a, b)
        if k2 in BY_ABBR:
            return BY_ABBR[k2]
    return None


def edit_distance(a: str, b: str, cap: int = 3) -> int:
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


@functools.lru_cache(maxsize=4096)
def lookup_name(s: str) -> tuple[Analyte | None, str | None, int]:
    """(analyte, dictionary spelling, edit distance). Exact first, then edit distance 1 (2 for long names)."""
    k = _key(s)
    if not k:
        return None, None, 99
    if k in BY_NAME:
        return BY_NAME[k], k, 0
    best: tuple[Analyte | None, str | None, int] = (None, None, 99)
    if len(k) <= 4:
        return best
    ks = set(k)
    for n, a in BY_NAME.items():
        if abs(len(n) - len(k)) > 2 or len(ks & set(n)) < len(k) - 2:
            continue
        d = edit_distance(k, n, 2)
        if d < best[2]:
            best = (a, n, d)
    # Chinese analyte names differ by one character (钾/钠, 白蛋白/球蛋白): no fuzzy match on short names
    limit = 0 if len(k) <= 4 else 1 if len(k) <= 7 else 2
    if best[0] is not None and best[2] <= limit:
        return best
    return None, None, 99


def is_known_name(s: str) -> bool:
    return lookup_name(s)[0] is not None
