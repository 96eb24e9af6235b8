"""Empty table cells re-read by recognition only: crops, rules painted out, readings kept only when they fit."""
from __future__ import annotations

import numpy as np

from ocr.cells import _accept, _crop, reread_empty_cells
from ocr.layout import Atom, Column, RawRow, Table


def _page() -> np.ndarray:
    img = np.full((200, 600, 3), 235, np.uint8)
    img[98:102, 300:316] = 30           # a short dash in the result cell of the row at y=100
    img[121:123, 0:600] = 40            # a table rule just under the row
    return img


def test_crop_keeps_the_dash_and_paints_out_the_rule():
    cut = _crop(_page(), (260.0, 76.0, 360.0, 124.0), 0.0)
    assert cut is not None
    field, dash = cut
    assert dash
    dark = field.min(axis=2) < 100
    assert dark.any() and dark.sum() < 100                           # the dash only: no rule across the field
    assert _crop(_page(), (420.0, 76.0, 520.0, 124.0), 0.0) is None   # a blank cell (only the rule) is blank


def test_readings_kept_only_when_they_fit_the_column():
    assert _accept("result", "一") == "-" and _accept("result", "十") == "+" and _accept("result", "6.52") == "6.52"
    assert _accept("result", "日") is None and _accept("ref", "-----") is None
    assert _accept("ref", "0.0-17.0") == "0.0-17.0" and _accept("flag", "↑") == "↑"
    assert _accept("unit", "1___%__.-") == "%" and _accept("unit", "----") is None


def test_empty_result_cell_filled_from_recognition_and_shape():
    cols = [Column("name", 20, 200), Column("result", 280, 340), Column("ref", 420, 520)]
    row = RawRow(0, 100.0)
    row.add(Atom("蛋白质", 20, 85, 110, 115, 0.99, col="name"))
    table = Table(40.0, [cols], [row], 40.0, 130.0)
    seen: list[int] = []

    def read_lines(crops: list[np.ndarray]) -> list[tuple[str, float]]:
        seen.append(len(crops))
        return [("日", 0.6)] * len(crops)     # recognition misreads the tiny dash

    assert reread_empty_cells([table], 25.0, _page(), 0.0, read_lines) == 1
    assert seen == [1]                      # one crop: the ref cell holds only a rule, so it is blank
    assert row.text("result") == "-"
    assert not row.cells.get("ref")
