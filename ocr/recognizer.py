"""Text-line recognition in few, well-filled batches: what runs the recognition model for the engine.

Owns: resizing line crops to the model's input height, grouping them into batches of similar width (sorted by
width/height, each batch padded to its widest crop, at least `min_width`, rounded up to a multiple of `width_step`
so that the runtime sees few distinct shapes, and at most `budget` padded pixels of width in a batch, which bounds
the memory a batch takes), running the batches (several at once) and decoding each one's output with rapidocr's
CTC decoder as soon as it is computed. Stands in for rapidocr's TextRecognizer (same input and
output types), so rapidocr's whole-image call uses it too.
Never decides which boxes are read (the caller does) and never changes a crop beyond the resize and padding that
rapidocr's own recogniser applies (zeros after normalisation, i.e. mid grey).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def normalised(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """3 x height x width float32: the crop resized to `height` (aspect kept, at most `width` wide), scaled to
    [-1, 1], zero-padded on the right (rapidocr's resize_norm_img)."""
    import cv2

    h, w = crop.shape[:2]
    rw = min(width, math.ceil(height * w / max(1, h)))
    out = np.zeros((3, height, width), np.float32)
    resized = cv2.resize(crop, (max(1, rw), height)).astype(np.float32)
    out[:, :, :rw] = resized.transpose(2, 0, 1) / 127.5 - 1.0
    return out


def plan_batches(widths: Sequence[float], batch: int, min_width: int, width_step: int,
                 budget: int = 0) -> list[tuple[list[int], int]]:
    """(indices, padded width) per batch: crops sorted by their width at model height, at most `batch` at a time
    and, with a `budget`, at most that many padded pixels of width in a batch (wide lines go in smaller batches, so
    the largest input the runtime ever sees, and the memory it keeps for it, stays bounded)."""
    def padded(w: float) -> int:
        return int(math.ceil(max(min_width, math.ceil(w)) / width_step) * width_step)

    out: list[tuple[list[int], int]] = []
    ids: list[int] = []
    for i in sorted(range(len(widths)), key=lambda i: widths[i]):
        if ids and (len(ids) == batch or (budget and (len(ids) + 1) * padded(widths[i]) > budget)):
            out.append((ids, padded(widths[ids[-1]])))
            ids = []
        ids.append(i)
    if ids:
        out.append((ids, padded(widths[ids[-1]])))
    return out


class LineRecognizer:
    """Callable like rapidocr's TextRecognizer (TextRecInput in, TextRecOutput out); `read(crops)` for callers that
    want (text, score) pairs. With `streams` > 1 that many batches are read at once, each on a thread of its own
    (the session must be safe to call from several threads and release the GIL, as onnxruntime's does): a page is
    ~25 small batches, and one batch split over two threads waits on a sync per layer. A batch's output (one
    probability per character class, 18,710 of them, per 8 px of width) is decoded as soon as it is computed: kept
    for a whole long screenshot it would be ~400 MB."""

    def __init__(self, session: Callable[[np.ndarray], np.ndarray], decode: Callable[..., Any], *, height: int = 48,
                 min_width: int, batch: int, width_step: int, budget: int = 0, streams: int = 1):
        self.session, self.decode = session, decode
        self.height, self.min_width, self.batch, self.width_step = height, min_width, batch, width_step
        self.budget, self.streams = budget, max(1, streams)

    def read(self, crops: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        if not crops:
            return []
        widths = [self.height * c.shape[1] / max(1, c.shape[0]) for c in crops]
        plan = plan_batches(widths, self.batch, self.min_width, self.width_step, self.budget)

        def one(job: tuple[list[int], int]) -> list[tuple[str, float]]:
            ids, width = job
            preds = self.session(np.stack([normalised(crops[i], self.height, width) for i in ids]))
            lines, _ = self.decode(preds, False, wh_ratio_list=[widths[i] / self.height for i in ids],
                                   max_wh_ratio=width / self.height)
            return [(str(text), float(score)) for text, score in lines]

        if self.streams > 1 and len(plan) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.streams) as pool:
                results = list(pool.map(one, plan))
        else:
            results = [one(job) for job in plan]
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for (ids, _), lines in zip(plan, results, strict=True):
            for i, line in zip(ids, lines, strict=True):
                out[i] = line
        return out

    def __call__(self, args: Any) -> Any:
        from rapidocr.ch_ppocr_rec.typings import TextRecOutput

        start = time.perf_counter()
        crops = [args.img] if isinstance(args.img, np.ndarray) else list(args.img)
        res = self.read(crops)
        # rapidocr annotates txts and word_results as 1-tuples; they hold one entry per crop
        txts: Any = tuple(t for t, _ in res)
        words: Any = tuple(None for _ in res)
        return TextRecOutput(imgs=crops, txts=txts, scores=[s for _, s in res], word_results=words,
                             elapse=time.perf_counter() - start)
