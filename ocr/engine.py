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
  HEALTHVAULT_OCR_REC_MIN_WIDTH / _REC_BATCH   recognition padding width and batch size (defaults below)
  HEALTHVAULT_OCR_DET_RUNTIME openvino (default when installed) | onnxruntime: what runs the detection model file
  HEALTHVAULT_OCR_OV_SHAPE_CACHE  OpenVINO's per-shape kernel cache entries (default 0: pages and tiles vary in shape)

Latency (rapidocr, 2 cores, A4 page of ~120 text lines; bench/bench_ocr.py and docs/ocr.md have the figures):
detection costs what its input has in pixels, so it runs on a copy whose LONG side is DET_SIDE (rapidocr's default
limit_type "min" scales the SHORT side, i.e. it runs detection on the whole 2000 px page); recognition costs what
its padded batches have in pixels, and rapidocr pads every batch to at least 48x320 while most table cells are 1-4
times as wide as high, so the padding width is cut to REC_MIN_WIDTH (narrower still saves a little more time but
misreads lone glyphs such as a printed ↓). Detection runs in OpenVINO (same ONNX file, float32), recognition in
onnxruntime (OpenVINO is no faster there at float32). The angle classifier never runs (pages are
upright after EXIF transpose; quarter turns are handled by the pipeline). Sessions are created when the engine is,
not on the first page.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from .errors import EngineError


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
        d = {"engine": self.name, "version": self.version, "models": list(self.models)}
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
REC_MIN_WIDTH = 160   # recognition batches are padded to max(this, widest crop in the batch) at height 48
REC_BATCH = 6         # crops per recognition batch (sorted by width, so little padding inside a batch)
DET_RUNTIMES = ("openvino", "onnxruntime")


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


class OpenVINOSession:
    """Runs one of the engine's ONNX files with OpenVINO's CPU plugin; callable like rapidocr's session wrappers
    (float32 NCHW array in, first output out). The detection network (convolutions only) runs ~3x faster here than
    in onnxruntime's CPU provider on the same file, with the same float32 results (max |diff| ~1e-4 on the
    probability map). Precision is pinned to f32: OpenVINO's default on CPUs with bf16/AMX is bf16, which would
    make results depend on the machine. Memory: OpenVINO keeps the activation buffers of the largest input seen
    (~600-700 MB at the 1280 px cap), where onnxruntime frees them after each run; a worker peaks near 1 GB instead
    of ~0.6 GB (bench/bench_ocr.py measures it)."""

    def __init__(self, path: str | Path, threads: int):
        ov = import_openvino()
        core = ov.Core()
        # no thread pinning: the worker shares its cores with the service and other workers; no cache of
        # per-shape kernels (CPU_RUNTIME_CACHE_CAPACITY 0): every page and screenshot tile has a shape of its own,
        # and the cache held ~300 MB more at the peak over the two dev sets for no measurable speed
        # (HEALTHVAULT_OCR_OV_SHAPE_CACHE sets it)
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
            "CPU_RUNTIME_CACHE_CAPACITY": _env_int("HEALTHVAULT_OCR_OV_SHAPE_CACHE", 0, 0)})
        self._request = self._compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._request.infer([np.ascontiguousarray(x, dtype=np.float32)])
        return self._request.get_output_tensor(0).data.copy()


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
        self.settings = {
            "det_side": int(det_side or _env_int("HEALTHVAULT_OCR_DET_SIDE", DET_SIDE)),
            "rec_min_width": int(rec_min_width or _env_int("HEALTHVAULT_OCR_REC_MIN_WIDTH", REC_MIN_WIDTH)),
            "rec_batch": int(rec_batch or _env_int("HEALTHVAULT_OCR_REC_BATCH", REC_BATCH)),
            "max_side": int(max_side), "threads": n, "use_cls": False, "det_runtime": _det_runtime(det_runtime),
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
        if self.settings["det_runtime"] == "openvino":
            try:
                self._ocr.text_det.session = OpenVINOSession(files["det"], n)
            except Exception as e:
                if det_runtime or os.environ.get("HEALTHVAULT_OCR_DET_RUNTIME"):
                    raise EngineError(f"openvino could not load the detection model: {e}") from e
                self.settings["det_runtime"] = "onnxruntime"  # not asked for explicitly: keep onnxruntime
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

    def recognize(self, image: np.ndarray, det_side: int | None = None) -> list[TextBox]:
        """Text lines of the image; `det_side` overrides the long side of the detection copy for this call (a
        screenshot tile, whose text is large, is detected on a smaller copy; recognition still reads the tile)."""
        with self._lock:  # onnxruntime sessions are thread-safe, but one page at a time keeps threads bounded
            det: Any = self._ocr.text_det   # created with the engine (_load_det_model)
            before = det.limit_side_len
            if det_side:
                det.limit_side_len = int(det_side)
            try:
                out = self._ocr(image, use_det=True, use_cls=False, use_rec=True)
            finally:
                det.limit_side_len = before
        boxes = getattr(out, "boxes", None)
        if boxes is None:
            return []
        return [TextBox([(float(x), float(y)) for x, y in b], str(t), float(s))
                for b, t, s in zip(boxes, out.txts, out.scores, strict=False)]

    def read_lines(self, images: list[np.ndarray]) -> list[tuple[str, float]]:
        """Recognition only (no detection) of crops that each hold one line: re-reading a table cell where
        detection found nothing (lone '-', '+', '↑' glyphs are often missed by detection)."""
        if not images:
            return []
        from rapidocr.ch_ppocr_rec.typings import TextRecInput

        rec: Any = self._ocr.text_rec   # created with the engine (_load_rec_model)
        with self._lock:
            out = rec(TextRecInput(img=list(images)))
        txts = getattr(out, "txts", None) or ()
        scores = getattr(out, "scores", None) or ()
        return [(str(t), float(s)) for t, s in zip(txts, scores, strict=False)]

    def raw(self, image: np.ndarray):
        """The plain rapidocr call (used by the benchmark to show pipeline overhead)."""
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
