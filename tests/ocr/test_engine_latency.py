"""What keeps a page fast without changing what is read: engine settings, one OCR pass, the photo path.

The latency figures themselves come from bench/bench_ocr.py (a shared 2-core machine makes wall-clock asserts in
tests meaningless); these tests pin the mechanisms the figures rely on."""
from __future__ import annotations

import pytest

from ocr import extract
from ocr.engine import DET_PIXELS, DET_SIDE, REC_MIN_WIDTH, RapidOCREngine, get_engine, import_openvino

from .sheetgen import ROWS, image_sheet, photo_of


class CountingEngine:
    """Delegates to the real engine and counts OCR passes."""

    def __init__(self, inner):
        self.inner, self.info, self.calls = inner, inner.info, []

    def recognize(self, image):
        self.calls.append(image.shape)
        return self.inner.recognize(image)


@pytest.mark.slow
def test_engine_is_configured_for_latency_and_records_it():
    eng = get_engine()
    ocr = eng._ocr
    # sessions exist as soon as the engine does: the first page does not pay the model load
    assert ocr.text_det is not None and ocr.text_rec is not None
    # no angle classifier, detection limited on the LONG side, narrow recognition padding
    assert ocr.use_cls is False and ocr.text_cls is None
    assert str(ocr.cfg.Det.limit_type) == "max" and ocr.cfg.Det.limit_side_len == DET_SIDE
    assert ocr.text_rec.min_width == REC_MIN_WIDTH < 320
    s = eng.info.as_dict()["settings"]
    assert s["det_side"] == DET_SIDE and s["rec_min_width"] == REC_MIN_WIDTH and s["use_cls"] is False
    assert s["det_runtime"] in ("openvino", "onnxruntime")
    # a 2000 px page is detected on a copy whose long side is DET_SIDE (rapidocr's default would not shrink it)
    import numpy as np
    from rapidocr.ch_ppocr_det.utils import DetPreProcess

    page = np.zeros((2000, 1414, 3), np.uint8)
    x = DetPreProcess(ocr.cfg.Det.limit_side_len, ocr.cfg.Det.limit_type)(page)
    assert max(x.shape[2:]) <= DET_SIDE + 32
    assert max(DetPreProcess(736, "min")(page).shape[2:]) >= 2000 - 32  # the default: the whole page
    # and at most DET_PIXELS pixels: a squarer page gets a shorter long side (OpenVINO keeps buffers for the largest)
    assert eng._det_side(page, None) == DET_SIDE
    for shape in [(2000, 2000, 3), (1500, 2000, 3), (1600, 2000, 3)]:
        side = eng._det_side(np.zeros(shape, np.uint8), None)
        x = DetPreProcess(side, "max")(np.zeros(shape, np.uint8))
        assert side <= DET_SIDE and x.shape[2] * x.shape[3] <= 1.06 * DET_PIXELS, (shape, x.shape)


@pytest.mark.slow
def test_upright_page_takes_one_ocr_pass():
    s = image_sheet(rows=ROWS[:6], rotate=1.5)
    eng = CountingEngine(get_engine())
    rep = extract(s.data, engine=eng)
    assert len(eng.calls) == 1, eng.calls  # deskew works on box geometry, no second pass
    assert {r.std_code for r in rep.results} >= {r[0] for r in ROWS[:6]}
    assert rep.provenance["settings"]["det_side"] == DET_SIDE


@pytest.mark.slow
def test_phone_photo_is_warped_straight_to_working_size():
    s = image_sheet()
    data = photo_of(s, long_side=3200)
    eng = CountingEngine(get_engine())
    rep = extract(data, engine=eng)
    page = rep.source["pages"][0]
    assert "perspective" in page["preprocess"]
    assert not any(x.startswith("downscale") for x in page["preprocess"])  # one resample, in the warp
    assert len(eng.calls) == 1 and max(eng.calls[0][:2]) <= 2000
    got = {r.std_code: r for r in rep.results}
    for code, _n, val, unit, _ref, lo, hi, flag in ROWS:
        assert code in got, (code, [(r.name, r.value) for r in rep.results])
        r = got[code]
        assert (r.value, r.unit, r.ref_low, r.ref_high, r.flag) == (val, unit, lo, hi, flag), code


@pytest.mark.slow
def test_openvino_detection_matches_onnxruntime():
    """The detection runtime is an implementation detail: same model file, same boxes, same text."""
    try:
        import_openvino()  # never a bare `import openvino`: it would send telemetry (docs/privacy.md, PIPL-13)
    except ImportError:
        pytest.skip("openvino is not installed")
    import numpy as np

    from ocr.inputs import load_image

    eng = get_engine()
    if eng.info.settings.get("det_runtime") != "openvino":
        pytest.skip("engine not configured with the openvino detection runtime")
    ref = RapidOCREngine(det_runtime="onnxruntime")
    s = image_sheet(rows=ROWS[:5], width=1000)
    img = load_image(s.data)
    a, b = eng.recognize(img), ref.recognize(img)
    assert [x.text for x in a] == [x.text for x in b]
    assert np.allclose([x.quad for x in a], [x.quad for x in b], atol=2.0)
