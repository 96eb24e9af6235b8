"""What runs a model file: OpenVINO (detection) and onnxruntime (recognition) sessions, and the heap they leave.

Owns: creating a session on one of the engine's ONNX files with this project's runtime options, calling it (float32
NCHW array in, first output out, as rapidocr's own session wrappers are called), and handing the heap memory a page
freed back to the operating system (release_heap). Never chooses files or settings (engine.py does) and never
imports openvino except through engine.import_openvino (its telemetry is declined there).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np


class OpenVINOSession:
    """Runs one of the engine's ONNX files with OpenVINO's CPU plugin; callable like rapidocr's session wrappers
    (float32 NCHW array in, first output out). The detection network (convolutions only) runs ~3x faster here than
    in onnxruntime's CPU provider on the same file, with the same float32 results (max |diff| ~1e-4 on the
    probability map). Precision is pinned to f32: OpenVINO's default on CPUs with bf16/AMX is bf16, which would
    make results depend on the machine. Memory: OpenVINO keeps the activation buffers of the largest input seen,
    and a larger one adds to them (measured: ~360 MB after a 1280x896 input, ~560 MB after 1280x960, ~750 MB after
    1152x1280), where onnxruntime frees them after each run: hence the engine's cap on the detection copy's pixels
    (bench/bench_ocr.py measures a worker's peak)."""

    def __init__(self, path: str | Path, threads: int, shape_cache: int = 0):
        from .engine import import_openvino  # the only way openvino is imported (no telemetry)

        ov = import_openvino()
        core = ov.Core()
        # no thread pinning: the worker shares its cores with the service and other workers; no cache of
        # per-shape kernels (CPU_RUNTIME_CACHE_CAPACITY 0): every page and screenshot tile has a shape of its own,
        # and the cache held ~300 MB more at the peak over the two dev sets for no measurable speed
        # (HEALTHVAULT_OCR_OV_SHAPE_CACHE sets it)
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
            "CPU_RUNTIME_CACHE_CAPACITY": int(shape_cache)})
        self._request = self._compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._request.infer([np.ascontiguousarray(x, dtype=np.float32)])
        return self._request.get_output_tensor(0).data.copy()


class OnnxSession:
    """Runs the recognition model (or the detection model without OpenVINO) in onnxruntime's CPU provider, with
    rapidocr's session options but for one: idle threads never spin. A spinning thread burns its core while the
    worker waits; on cores shared with the service and other workers that time is taken from them (under load,
    pages took ~25 % longer with spinning). onnxruntime frees its buffers after each run (no arena), so memory
    follows the batch being read, not the largest ever seen. Safe to call from several threads at once."""

    def __init__(self, path: str | Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.enable_cpu_mem_arena = False
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)   # glibc only


def release_heap() -> None:
    """Give the heap memory freed by the last page back to the operating system (glibc's malloc_trim; a no-op
    elsewhere). Both runtimes allocate a page's buffers with malloc from several threads; glibc keeps what they
    free in per-thread heaps: after 50 pages of the dev sets ~0.5 GB of a worker's 1.2 GB resident memory was
    freed memory, and each page's buffers came on top of it (peak 1.28 GB; trimmed after each page 1.16 GB, for
    ~0.1 ms a page)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
