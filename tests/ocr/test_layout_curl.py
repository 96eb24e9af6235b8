"""Rows on a curled page: cells far from the name sit up to a row away from its height; columns are followed."""
from __future__ import annotations

from ocr.inputs import Token
from ocr.layout import Column, build_rows


def test_cells_follow_a_bowed_baseline_column_by_column():
    H, pitch = 20.0, 40.0
    names = ["钾", "钠", "氯", "钙", "镁", "磷", "尿素", "肌酐"]
    cols = [Column("name", 40, 150), Column("result", 280, 340), Column("flag", 400, 420), Column("unit", 480, 560),
            Column("ref", 600, 700)]
    body = []
    for k, name in enumerate(names):
        y = 100 + k * pitch
        # the baseline drops further right: +0.3, +0.5, +0.7, +0.9 of a row pitch at the far columns
        body.append([Token(name, 40, y - H / 2, 40 + H * len(name), y + H / 2, 0.99),
                     Token(f"{k + 1}.0{k}", 280, y + 12 - H / 2, 330, y + 12 + H / 2, 0.99),
                     Token("↑", 402, y + 20 - H / 2, 412, y + 20 + H / 2, 0.99),
                     Token("mmol/L", 480, y + 28 - H / 2, 550, y + 28 + H / 2, 0.99),
                     Token(f"{k}.0-{k + 9}.0", 600, y + 36 - H / 2, 690, y + 36 + H / 2, 0.99)])
    rows = build_rows([cols], body, H)
    assert [r.text("name") for r in rows] == names
    for k, r in enumerate(rows):
        assert r.text("result") == f"{k + 1}.0{k}"
        assert r.text("flag") == "↑"
        assert r.text("unit") == "mmol/L"
        assert r.text("ref") == f"{k}.0-{k + 9}.0"
