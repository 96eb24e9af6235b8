"""What moving OCR into a worker process costs: a child's start (engine load) against a page, and a page through the
long-lived child against the same page in-process, interleaved in one run (issue 14 item 11).

    python bench/bench_ocr_worker.py [--rounds 5]

Prints: the child's start (spawn + imports + engine load, as the parent waits for it, and the load time the child
reports), then per round a born-digital PDF page and a photo page through the warm child and in-process
(`ocr.extract` in this process, engine loaded once); medians and the ratio worker/in-process. A fresh child per page
would pay the start on every page; the pool of one long-lived child pays it once per child.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import ocr
    from ocr import engine
    from tests.ocr import sheetgen
    from vault.labs.ocr_worker import OcrWorker

    pages = {"digital pdf": sheetgen.digital_pdf().data, "photo": sheetgen.photo_of(sheetgen.image_sheet())}
    print(f"bench_ocr_worker: {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    starts = []
    for _ in range(3):
        worker = OcrWorker()
        started = time.perf_counter()
        worker.extract(b"not a page")  # spawns and waits for the ready frame
        starts.append((time.perf_counter() - started, worker.last_load_seconds or 0.0))
        worker.close()
    shown = ", ".join(f"{w:.2f} s (load {ld:.2f} s)" for w, ld in starts)
    print(f"child start (spawn + imports + engine load): {shown}")
    engine.get_engine()
    worker = OcrWorker()
    worker.extract(b"not a page")
    for data in pages.values():  # warm both sides on each kind of page
        worker.extract(data)
        ocr.extract(data)
    times: dict[tuple[str, str], list[float]] = {}
    for index in range(args.rounds):
        order = ("worker", "in-process") if index % 2 == 0 else ("in-process", "worker")
        for name, data in pages.items():
            for side in order:
                started = time.perf_counter()
                if side == "worker":
                    outcome = worker.extract(data)
                    assert outcome.status in ("done", "needs_review"), outcome
                else:
                    ocr.extract(data)
                times.setdefault((name, side), []).append(time.perf_counter() - started)
    worker.close()
    start = statistics.median(w for w, _ in starts)
    for name in pages:
        w, p = statistics.median(times[(name, "worker")]), statistics.median(times[(name, "in-process")])
        print(f"{name:>12}: worker {w * 1000:7.1f} ms  in-process {p * 1000:7.1f} ms  ratio {w / p:.3f}  "
              f"(a child per page would add ~{start:.1f} s: {(w + start) / p:.1f}x)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
