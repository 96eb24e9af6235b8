"""OCR engine behind a small interface.

Default: rapidocr (PaddleOCR PP-OCR models as ONNX, shipped inside the rapidocr wheel) on onnxruntime.
The three model files are passed explicitly so that nothing can ever trigger a download.

Configuration (environment, read when the engine is first needed):
  HEALTHVAULT_OCR_ENGINE      rapidocr (default) | paddleocr
  HEALTHVAULT_OCR_THREADS     onnxruntime intra-op threads (default: min(2, cpu count))
  HEALTHVAULT_OCR_MODEL_DIR   directory holding det/rec/cls model files (default: the rapidocr wheel's models/)
  HEALTHVAULT_OCR_DET_MODEL / _REC_MODEL / _CLS_MODEL   explicit file names inside that directory (rapidocr)
                              or model directories (paddleocr)
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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

    def as_dict(self) -> dict:
        return {"engine": self.name, "version": self.version, "models": list(self.models)}


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


DET_SIDE = 1280


class RapidOCREngine:
    """rapidocr + onnxruntime, weights from the wheel (or a configured directory), never downloaded."""

    DET = "PP-OCRv6_det_small.onnx"
    REC = "PP-OCRv6_rec_small.onnx"
    CLS = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"

    def __init__(self, model_dir: str | None = None, threads: int | None = None,
                 det: str | None = None, rec: str | None = None, cls: str | None = None,
                 max_side: int = 2000, rec_batch: int = 6, det_side: int | None = None):
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
        params = {
            "Global.log_level": "error",
            "Global.max_side_len": max_side,
            "Global.use_cls": False,
            "Det.model_path": str(files["det"]),
            "Rec.model_path": str(files["rec"]),
            "Cls.model_path": str(files["cls"]),
            "Rec.rec_batch_num": rec_batch,
            # detection runs on a copy scaled so its long side is det_side (recognition still crops from the
            # full-resolution page): detection cost follows pixels, and table text is large enough at this size
            "Det.limit_type": "max",
            "Det.limit_side_len": int(det_side or os.environ.get("HEALTHVAULT_OCR_DET_SIDE") or DET_SIDE),
            "EngineConfig.onnxruntime.intra_op_num_threads": n,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        try:
            self._ocr = RapidOCR(params=params)
        except Exception as e:  # noqa: BLE001
            raise EngineError(f"rapidocr failed to load: {e}") from e
        try:
            from importlib.metadata import version
            ver = version("rapidocr")
        except Exception:  # noqa: BLE001
            ver = getattr(rapidocr, "__version__", "?")
        self.info = EngineInfo(
            name="rapidocr+onnxruntime", version=ver,
            models=[{"role": role, "name": f.stem, "file": f.name, "sha256": sha256_file(f)}
                    for role, f in files.items()])
        self._lock = threading.Lock()

    def recognize(self, image: np.ndarray) -> list[TextBox]:
        with self._lock:  # onnxruntime sessions are thread-safe, but one page at a time keeps threads bounded
            out = self._ocr(image, use_det=True, use_cls=False, use_rec=True)
        boxes = getattr(out, "boxes", None)
        if boxes is None:
            return []
        return [TextBox([(float(x), float(y)) for x, y in b], str(t), float(s))
                for b, t, s in zip(boxes, out.txts, out.scores)]

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
            for poly, t, s in zip(page["rec_polys"], page["rec_texts"], page["rec_scores"]):
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
