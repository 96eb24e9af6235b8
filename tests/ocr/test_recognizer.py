"""Recognition batches (ocr/recognizer.py) and the engine's detect-then-recognise path: what makes a page cheaper
must not change what is read."""
from __future__ import annotations

import numpy as np
import pytest
from rapidocr.utils.process_img import get_rotate_crop_image

from ocr.engine import get_engine
from ocr.recognizer import LineRecognizer, plan_batches

from .sheetgen import ROWS, image_sheet


def test_batches_hold_every_crop_once_sorted_and_bounded():
    rng = np.random.default_rng(7)
    widths = [float(w) for w in rng.integers(20, 2400, 200)]
    plan = plan_batches(widths, 6, 160, 32, 3840)
    assert sorted(i for ids, _ in plan for i in ids) == list(range(len(widths)))
    flat = [widths[i] for ids, _ in plan for i in ids]
    assert flat == sorted(flat)                                   # similar widths together: little padding
    for ids, width in plan:
        assert 1 <= len(ids) <= 6 and width % 32 == 0 and width >= 160
        assert width >= max(widths[i] for i in ids)               # nothing is cut
        assert len(ids) == 1 or len(ids) * width <= 3840          # the largest input stays bounded
    assert max(w for _, w in plan) >= 2400 - 32                   # a very wide line still goes alone
    unbounded = plan_batches(widths, 6, 160, 32)
    assert all(len(ids) == 6 for ids, _ in unbounded[:-1])


class EchoSession:
    """Returns its input batch; records the shapes."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch):
        self.shapes.append(batch.shape)
        return batch


def test_line_recognizer_pads_normalises_and_keeps_input_order():
    def decode(preds, _word_box, wh_ratio_list, max_wh_ratio):
        # 'text' = how many columns of the padded input hold the crop (not mid-grey padding)
        assert len(wh_ratio_list) == len(preds) and max_wh_ratio * 48 == preds.shape[3]
        return [(str(int((np.abs(p[0]).max(axis=0) > 0).sum())), 0.9) for p in preds], None

    session = EchoSession()
    rec = LineRecognizer(session, decode, min_width=160, batch=4, width_step=8, streams=2)
    crops = [np.full((24, w, 3), 255, np.uint8) for w in (100, 30, 400, 60, 250)]   # at height 48: 2x wide
    out = rec.read(crops)
    assert [t for t, _ in out] == ["200", "60", "800", "120", "500"]
    assert all(s[0] <= 4 and s[1:3] == (3, 48) and s[3] % 8 == 0 for s in session.shapes)
    assert sorted(session.shapes) == [(1, 3, 48, 800), (4, 3, 48, 504)]   # 4 narrowest, padded 500 -> 504
    white = rec.read([np.full((48, 48, 3), 255, np.uint8)])
    assert white == [("48", 0.9)]
    assert rec.read([]) == []


@pytest.mark.slow
def test_detect_then_recognize_reads_what_recognize_reads():
    eng = get_engine()
    from ocr.inputs import load_image

    img = load_image(image_sheet(rows=ROWS[:6], width=1000).data)
    whole = eng.recognize(img)
    split = eng.recognize_quads(img, eng.detect(img))
    assert [b.text for b in split] == [b.text for b in whole]
    assert np.allclose([b.quad for b in split], [b.quad for b in whole], atol=1.0)


@pytest.mark.slow
def test_two_batches_at_once_read_what_one_at_a_time_reads():
    """Recognition reads two batches at once: results come back in order, unchanged."""
    eng = get_engine()
    from ocr.inputs import load_image

    img = load_image(image_sheet(rows=ROWS, width=1200).data)
    rec = eng._ocr.text_rec
    crops = [get_rotate_crop_image(img, np.array(q, dtype=np.float32)) for q in eng.detect(img)]
    kw = {"min_width": rec.min_width, "batch": 4, "width_step": rec.width_step, "budget": rec.budget}
    one = LineRecognizer(rec.session, rec.decode, streams=1, **kw)
    two = LineRecognizer(rec.session, rec.decode, streams=2, **kw)
    assert len(plan_batches([48 * c.shape[1] / c.shape[0] for c in crops], 4, rec.min_width, 32)) >= 4
    a, b = one.read(crops), two.read(crops)
    assert [t for t, _ in a] == [t for t, _ in b] and any(t for t, _ in a)
    assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-4)
