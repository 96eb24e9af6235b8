"""OCR engine behind a small interface.

Default: rapidocr (PaddleOCR PP-OCR models as ONNX, shipped inside the rapidocr wheel) on onnxruntime, with the
detection model run by OpenVINO when it is installed. The three model files are passed explicitly so that nothing
can ever trigger a download.

Configuration (environment, read when the engine is first needed):
  HEALTHVAULT_OCR_ENGINE      rapidocr (default) | paddleocr
  HEALTHVAULT_OCR_THREADS     onnxruntime intra-op / OpenVINO inference threads (default: min(2, cpu count))
  HEALTHVAULT_OCR_MODEL_DIR   directory holding det/rec/cls model files (default: the rapidocr wheel's models/)
  HEALTHVAULT_OCR_DET_MODEL / _REC_MODEL / _CLS_MODEL   explicit file names inside that directory (rapidocr)
                              or model directories (paddleocr)
  HEALTHVAULT_OCR_DET_SIDE    long side (px) of the copy that text detection runs on (default DET_SIDE)
  HEALTHVAULT_OCR_DET_PIXELS  at most this many pixels in that copy (default DET_PIXELS)
  HEALTHVAULT_OCR_REC_MIN_WIDTH / _REC_BATCH / _REC_BUDGET / _REC_STREAMS   recognition padding width, crops
                              and padded pixels of width per batch, batches run at once (defaults below)
  HEALTHVAULT_OCR_DET_RUNTIME openvino (default when installed) | onnxruntime: what runs the detection model file
  HEALTHVAULT_OCR_OV_SHAPE_CACHE  OpenVINO's per-shape kernel cache entries (default 0: pages and tiles vary in shape)

Latency (rapidocr, 2 cores, A4 page of ~120 text lines; bench/bench_ocr.py and docs/ocr.md have the figures):
detection costs what its input has in pixels, so it runs on a copy whose LONG side is DET_SIDE (rapidocr's default
limit_type "min" scales the SHORT side, i.e. it runs detection on the whole 2000 px page), and at most DET_PIXELS
pixels; recognition costs what its padded batches have in pixels, and rapidocr pads every batch to at least 48x320
while most table cells are 1-4 times as wide as high, so the padding width is cut to REC_MIN_WIDTH (narrower still
saves a little more time but misreads lone glyphs such as a printed ↓). Detection runs in OpenVINO (same ONNX file,
float32), recognition in onnxruntime through this project's batching (recognizer.py: batches of similar width, two
at a time, each on one thread; OpenVINO was no faster there and kept buffers for the widest batch seen). No
onnxruntime thread spins while it waits (the cores are shared). The angle classifier never runs (pages are upright
after EXIF transpose; quarter turns are handled by the pipeline). Sessions are created when the engine is, not on
the first page. `detect` and `recognize_quads` split a call in two, so that a caller (screenshot tiles) can drop
boxes before they are recognised.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from .errors import EngineError
from .recognizer import LineRecognizer
from .sessions import OnnxSession, OpenVINOSession

Quad = list[tuple[float, float]]   # 4 x (x, y), clockwise from top-left


@dataclass
class TextBox:
    """One detected text line: quadrilateral (4 x (x, y), clockwise from top-left), text, score."""

    quad: list[tuple[float, float]]
    text: str
    score: float


@dataclass
class EngineInfo:
    name: str
    version: str
    models: list[dict] = field(default_factory=list)  # {"role", "name", "file", "sha256"}
    settings: dict = field(default_factory=dict)      # detection size and runtime, recognition padding/batch ...

    def as_dict(self) -> dict:
        d: dict[str, Any] = {"engine": self.name, "version": self.version, "models": list(self.models)}
        if self.settings:
            d["settings"] = dict(self.settings)
        return d


class Engine(Protocol):
    info: EngineInfo

    def recognize(self, image: np.ndarray) -> list[TextBox]:
        """image: HxWx3 uint8 BGR (OpenCV order). Returns text lines."""
        ...


_SHA_CACHE: dict[str, str] = {}


def sha256_file(path: str | Path) -> str:
    p = str(path)
    if p not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[p] = h.hexdigest()
    return _SHA_CACHE[p]


def _threads() -> int:
    env = os.environ.get("HEALTHVAULT_OCR_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(2, os.cpu_count() or 1))


DET_SIDE = 1280       # long side of the detection input (px)
DET_PIXELS = 1280 * 960   # and its area at most (a 4:3 page at DET_SIDE; squarer pages get a shorter long side)
REC_MIN_WIDTH = 160   # recognition batches are padded to max(this, widest crop in the batch) at height 48
REC_BATCH = 6         # crops per recognition batch (sorted by width, so little padding inside a batch)
DET_RUNTIMES = ("openvino", "onnxruntime")
REC_WIDTH_STEP = 8    # recognition batch widths are rounded up to a multiple of this (the model's width stride;
                      # 32 made the shapes repeat, for no gain in onnxruntime, and cost 9 % more padding)
REC_BUDGET = 3840     # padded pixels of width in one recognition batch (6 crops of 640 px; wider lines fewer a batch)
REC_STREAMS = 2       # recognition batches run at once (one thread each)


def import_openvino() -> ModuleType:
    """`import openvino` without its telemetry (PIPL-13: no runtime egress).

    Importing openvino imports openvino.tools.ovc, which sends a "general_import" event to Google Analytics unless a
    consent file in the home directory says no or $CI is "true" (openvino_telemetry's opt-in checker; seen by the test
    suite's egress guard as a lookup of www.google-analytics.com). The checker is made to answer "declined" in this
    process before openvino is imported, so nothing is ever sent, whatever the machine's home directory holds."""
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:  # no telemetry package: nothing to silence
        pass
    else:
        opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: opt_in_checker.ConsentCheckResult.DECLINED
    import openvino

    return openvino


def _det_runtime(requested: str | None) -> str:
    name = (requested or os.environ.get("HEALTHVAULT_OCR_DET_RUNTIME") or "").lower()
    if name and name not in DET_RUNTIMES:
        raise EngineError(f"unknown detection runtime {name!r}; choose one of {list(DET_RUNTIMES)}")
    if name:
        return name
    try:
        import_openvino()
    except ImportError:
        return "onnxruntime"
    return "openvino"


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    v = os.environ.get(name, "")
    return int(v) if v.isdigit() and int(v) >= minimum else default


def _det_input(det: Any) -> Any:
    """A factory of rapidocr's detection preprocessing (resize to multiples of 32 within limit_side_len, normalise,
    NCHW) that normalises in float32: rapidocr's works in float64, 0.15 s of a 1.2 s photo page."""
    from rapidocr.ch_ppocr_det.utils import DetPreProcess

    class DetInput(DetPreProcess):
        def __call__(self, img: np.ndarray) -> np.ndarray | None:
            resized = self.resize(img)
            if resized is None:
                return None
            x = resized.astype(np.float32)
            x *= (1.0 / (255.0 * self.std)).astype(np.float32)
            x -= (self.mean / self.std).astype(np.float32)
            return np.ascontiguousarray(x.transpose(2, 0, 1))[np.newaxis]

    return lambda: DetInput(det.limit_side_len, det.limit_type, det.mean, det.std)


class RapidOCREngine:
    """rapidocr + onnxruntime, weights from the wheel (or a configured directory), never downloaded."""

    DET = "PP-OCRv6_det_small.onnx"
    REC = "PP-OCRv6_rec_small.onnx"
    CLS = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"

    def __init__(self, model_dir: str | None = None, threads: int | None = None,
                 det: str | None = None, rec: str | None = None, cls: str | None = None,
                 max_side: int = 2000, rec_batch: int | None = None, det_side: int | None = None,
                 rec_min_width: int | None = None, det_runtime: str | None = None):
        try:
            import rapidocr
            from rapidocr import RapidOCR
        except ImportError as e:  # pragma: no cover - dependency missing
            raise EngineError(f"rapidocr is not installed: {e}") from e
        mdir = Path(model_dir or os.environ.get("HEALTHVAULT_OCR_MODEL_DIR")
                    or Path(rapidocr.__file__).parent / "models")
        files = {
            "det": mdir / (det or os.environ.get("HEALTHVAULT_OCR_DET_MODEL") or self.DET),
            "rec": mdir / (rec or os.environ.get("HEALTHVAULT_OCR_REC_MODEL") or self.REC),
            "cls": mdir / (cls or os.environ.get("HEALTHVAULT_OCR_CLS_MODEL") or self.CLS),
        }
        for role, f in files.items():
            if not f.is_file():
                raise EngineError(f"{role} model file missing: {f} (no download is attempted)")
        n = threads or _threads()
        self.settings: dict[str, Any] = {
            "det_side": int(det_side or _env_int("HEALTHVAULT_OCR_DET_SIDE", DET_SIDE)),
            "det_pixels": _env_int("HEALTHVAULT_OCR_DET_PIXELS", DET_PIXELS),
            "rec_min_width": int(rec_min_width or _env_int("HEALTHVAULT_OCR_REC_MIN_WIDTH", REC_MIN_WIDTH)),
            "rec_batch": int(rec_batch or _env_int("HEALTHVAULT_OCR_REC_BATCH", REC_BATCH)),
            "max_side": int(max_side), "threads": n, "use_cls": False, "det_runtime": _det_runtime(det_runtime),
            "rec_streams": _env_int("HEALTHVAULT_OCR_REC_STREAMS", REC_STREAMS),
            "rec_budget": _env_int("HEALTHVAULT_OCR_REC_BUDGET", REC_BUDGET),
        }
        params = {
            "Global.log_level": "error",
            "Global.max_side_len": max_side,
            "Global.use_cls": False,
            "Det.model_path": str(files["det"]),
            "Rec.model_path": str(files["rec"]),
            "Cls.model_path": str(files["cls"]),
            "Rec.rec_batch_num": self.settings["rec_batch"],
            # rapidocr pads every recognition batch to at least 48x320 (PaddleOCR's training shape); most table
            # cells are 1-4 times as wide as high, so about half of the recognition work was padding
            "Rec.rec_img_shape": [3, 48, self.settings["rec_min_width"]],
            # detection runs on a copy whose LONG side is det_side (rapidocr's default limit_type "min" would run
            # it on the whole page); recognition still crops from the page as given (<= max_side)
            "Det.limit_type": "max",
            "Det.limit_side_len": self.settings["det_side"],
            "EngineConfig.onnxruntime.intra_op_num_threads": n,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        try:
            self._ocr = RapidOCR(params=params)
            # rapidocr creates its onnxruntime sessions on first use: do it now, so a worker pays the 1-2 s load
            # when it starts, not on its first page (and a broken model fails here, not mid-job)
            self._ocr._load_det_model()
            self._ocr._load_rec_model()
        except Exception as e:
            raise EngineError(f"rapidocr failed to load: {e}") from e
        det_session: OpenVINOSession | OnnxSession | None = None
        if self.settings["det_runtime"] == "openvino":
            try:
                det_session = OpenVINOSession(files["det"], n, _env_int("HEALTHVAULT_OCR_OV_SHAPE_CACHE", 0, 0))
            except Exception as e:
                if det_runtime or os.environ.get("HEALTHVAULT_OCR_DET_RUNTIME"):
                    raise EngineError(f"openvino could not load the detection model: {e}") from e
                self.settings["det_runtime"] = "onnxruntime"  # not asked for explicitly: keep onnxruntime
        text_det: Any = self._ocr.text_det   # created above (_load_det_model)
        text_det.session = det_session or OnnxSession(files["det"], n)
        text_det.get_preprocess = _det_input(text_det)
        # recognition: this project's batching (recognizer.py) in place of rapidocr's; `rec_streams` batches at
        # once, the threads split among them
        streams = max(1, min(n, self.settings["rec_streams"]))
        text_rec: Any = self._ocr.text_rec   # created above (_load_rec_model): its CTC decoder is kept
        self._ocr.text_rec = LineRecognizer(  # type: ignore[assignment]
            OnnxSession(files["rec"], max(1, n // streams)), text_rec.postprocess_op,
            min_width=self.settings["rec_min_width"], batch=self.settings["rec_batch"], width_step=REC_WIDTH_STEP,
            budget=self.settings["rec_budget"], streams=streams)
        try:
            from importlib.metadata import version
            ver = version("rapidocr")
        except Exception:  # noqa: BLE001
            ver = getattr(rapidocr, "__version__", "?")
        self.info = EngineInfo(
            name="rapidocr+onnxruntime", version=ver,
            models=[{"role": role, "name": f.stem, "file": f.name, "sha256": sha256_file(f)}
                    for role, f in files.items()],
            settings=dict(self.settings))
        self._lock = threading.Lock()

    def _det_side(self, image: np.ndarray, requested: int | None) -> int:
        """Long side of the detection copy: the requested or configured one, cut so that the copy holds at most
        det_pixels pixels (OpenVINO keeps buffers for the largest input it has seen: a squarish photo at the full
        long side grew a worker by ~200 MB, and 4:3 and A4 pages already fit)."""
        h, w = image.shape[:2]
        side = int(requested or self.settings["det_side"])
        if h and w:
            side = min(side, int(math.sqrt(self.settings["det_pixels"] * max(h, w) / min(h, w))))
        return max(32, side)

    def recognize(self, image: np.ndarray, det_side: int | None = None) -> list[TextBox]:
        """Text lines of the image; `det_side` overrides the long side of the detection copy for this call (a
        screenshot tile, whose text is large, is detected on a smaller copy; recognition still reads the tile)."""
        with self._lock:  # onnxruntime sessions are thread-safe, but one page at a time keeps threads bounded
            det: Any = self._ocr.text_det   # created with the engine (_load_det_model)
            before = det.limit_side_len
            det.limit_side_len = self._det_side(image, det_side)
            try:
                out: Any = self._ocr(image, use_det=True, use_cls=False, use_rec=True)
            finally:
                det.limit_side_len = before
        boxes = getattr(out, "boxes", None)
        if boxes is None:
            return []
        return [TextBox([(float(x), float(y)) for x, y in b], str(t), float(s))
                for b, t, s in zip(boxes, out.txts, out.scores, strict=False)]

    def detect(self, image: np.ndarray, det_side: int | None = None) -> list[Quad]:
        """Text detection only: the quadrilaterals of the text lines in image coordinates (clockwise from top-left);
        `det_side` overrides the long side of the detection copy for this call. With recognize_quads, a caller can
        drop boxes it will never use (tile overlaps, watermarks) before paying for their recognition."""
        with self._lock:
            det: Any = self._ocr.text_det   # created with the engine (_load_det_model)
            before = det.limit_side_len
            det.limit_side_len = self._det_side(image, det_side)
            try:
                out = det(image)
            finally:
                det.limit_side_len = before
        boxes = getattr(out, "boxes", None)
        if boxes is None:
            return []
        return [[(float(x), float(y)) for x, y in b] for b in boxes]

    def recognize_quads(self, image: np.ndarray, quads: list[Quad]) -> list[TextBox]:
        """Recognition of the lines at `quads` (from detect, image coordinates) in one batched call, kept as
        recognize() keeps them (text not blank, score at least rapidocr's text_score)."""
        if not quads:
            return []
        from rapidocr.utils.process_img import get_rotate_crop_image

        crops = [get_rotate_crop_image(image, np.array(q, dtype=np.float32)) for q in quads]
        min_score = float(self._ocr.text_score)
        return [TextBox(list(q), t, s) for q, (t, s) in zip(quads, self.read_lines(crops), strict=True)
                if t.strip() and s >= min_score]

    def read_lines(self, images: list[np.ndarray]) -> list[tuple[str, float]]:
        """Recognition only (no detection) of crops that each hold one line: re-reading a table cell where
        detection found nothing (lone '-', '+', '↑' glyphs are often missed by detection)."""
        if not images:
            return []
        rec: Any = self._ocr.text_rec   # the engine's LineRecognizer
        with self._lock:
            return rec.read(list(images))

    def raw(self, image: np.ndarray):
        """rapidocr's own whole-image call with this engine's sessions and settings (the benchmark's 'raw' call)."""
        with self._lock:
            return self._ocr(image, use_det=True, use_cls=False, use_rec=True)


class PaddleOCREngine:  # pragma: no cover - optional, needs a local paddleocr install and model directories
    """A full paddleocr install with local model directories (no download: directories must exist)."""

    def __init__(self, model_dir: str | None = None, **_):
        try:
            import paddleocr
            from paddleocr import PaddleOCR
        except ImportError as e:
            raise EngineError(f"paddleocr is not installed: {e}") from e
        root = Path(model_dir or os.environ.get("HEALTHVAULT_OCR_MODEL_DIR") or "")
        dirs = {"det": root / os.environ.get("HEALTHVAULT_OCR_DET_MODEL", "det"),
                "rec": root / os.environ.get("HEALTHVAULT_OCR_REC_MODEL", "rec")}
        for role, d in dirs.items():
            if not d.is_dir():
                raise EngineError(f"paddleocr {role} model directory missing: {d}")
        self._ocr = PaddleOCR(text_detection_model_dir=str(dirs["det"]),
                              text_recognition_model_dir=str(dirs["rec"]),
                              use_doc_orientation_classify=False, use_doc_unwarping=False,
                              use_textline_orientation=False)
        models = []
        for role, d in dirs.items():
            for f in sorted(d.iterdir()):
                if f.is_file() and f.suffix in (".pdiparams", ".onnx", ".json", ".pdmodel"):
                    models.append({"role": role, "name": d.name, "file": f.name, "sha256": sha256_file(f)})
        self.info = EngineInfo("paddleocr", getattr(paddleocr, "__version__", "?"), models)
        self._lock = threading.Lock()

    def recognize(self, image: np.ndarray) -> list[TextBox]:
        with self._lock:
            res = self._ocr.predict(image)
        out = []
        for page in res:
            for poly, t, s in zip(page["rec_polys"], page["rec_texts"], page["rec_scores"], strict=False):
                out.append(TextBox([(float(x), float(y)) for x, y in poly], str(t), float(s)))
        return out


ENGINES = {"rapidocr": RapidOCREngine, "paddleocr": PaddleOCREngine}

_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The process-wide engine, created on first use."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                name = os.environ.get("HEALTHVAULT_OCR_ENGINE", "rapidocr").lower()
                if name not in ENGINES:
                    raise EngineError(f"unknown OCR engine {name!r}; choose one of {sorted(ENGINES)}")
                _engine = ENGINES[name]()
    return _engine


def set_engine(engine: Engine | None) -> None:
    """Install an engine instance (tests, or a caller that builds its own)."""
    global _engine
    with _engine_lock:
        _engine = engine
