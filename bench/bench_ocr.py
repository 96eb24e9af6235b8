#!/usr/bin/env python3
"""OCR extractor benchmark on lab-sheet datasets (e.g. shared/datasets/lab-sheets-dev and lab-sheets-dev2).

    python bench/bench_ocr.py DATASET_DIR [DATASET_DIR ...] [--out PRED_DIR] [--repeat 5] [--rss-pages 50]
                                          [--skip-rss] [--latency-only] [--skip-latency] [--limit N]

1. For each DATASET_DIR: runs `ocr.extract` over every page file, writes PRED_DIR/<set>/<id>.json (truth format
   field names), then runs `DATASET_DIR/score.py` on it and prints its table and its last line `field_f1=...`.
   With several sets, the scorer also runs once over all of them together and its `needs_review:` line is printed
   (target: catches >= 90 % of rows with a wrong field while flagging <= 10 % of rows).
2. Latency per page (median / min over --repeat interleaved rounds, after one warm-up call each): a photo page and a
   scanned-PDF page end to end through `extract`, next to raw rapidocr calls on the same prepared page in the same
   run (so the pipeline's overhead shows): with the engine's settings, with this project's previous settings and
   with rapidocr's default config; ratios extract/raw are printed. Then a long phone screenshot (the tallest of at
   most three screens in the sets) end to end, next to one raw rapidocr call on the whole image (which rapidocr
   shrinks to its 2000 px limit: what reading it naively costs) and raw calls on the full-resolution tiles that
   `extract` reads. Then a born-digital PDF page.
   Targets: photo <= 1.5 s median, three-screen screenshot <= 3 s median, digital PDF page <= 0.1 s.
3. Peak RSS of a fresh worker process after --rss-pages pages processed in a row (target < 1.5 GB).
Skips (exit 0) with a message when no DATASET_DIR exists. Prints the load average: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAGE_EXT = (".png", ".jpg", ".jpeg", ".pdf")


def samples(d: Path) -> list[tuple[str, Path, dict]]:
    out = []
    for f in sorted(d.iterdir()):
        if f.suffix.lower() in PAGE_EXT:
            truth = {}
            tj = f.with_suffix(".json")
            if tj.exists():
                try:
                    truth = json.loads(tj.read_text(encoding="utf-8"))
                except ValueError:
                    truth = {}
            out.append((f.stem, f, truth))
    return out


def peak_rss_mb() -> float:
    """Peak resident set of this process image. VmHWM (per address space, reset by exec) where available:
    ru_maxrss on Linux carries the forking parent's peak across exec, which would blame the worker for it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _plain_rapidocr(eng, extra: dict | None = None):
    """rapidocr as it comes (its own onnxruntime sessions and recogniser), only the model paths and thread count
    pinned, plus `extra` params; None if it cannot be built."""
    try:
        from pathlib import Path as _P

        import rapidocr
        from rapidocr import RapidOCR

        m = _P(rapidocr.__file__).parent / "models"
        files = {x["role"]: x["file"] for x in eng.info.models}
        n = int(os.environ.get("HEALTHVAULT_OCR_THREADS", "2"))
        return RapidOCR(params={"Global.log_level": "error", "Det.model_path": str(m / files["det"]),
                                "Rec.model_path": str(m / files["rec"]), "Cls.model_path": str(m / files["cls"]),
                                "EngineConfig.onnxruntime.intra_op_num_threads": n, **(extra or {})})
    except Exception as e:
        print(f"  (plain rapidocr not available: {e})")
        return None


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _baselines(eng) -> dict:
    """Plain rapidocr instances on the same model files, for the same-run comparison:
    'previous' = this project's settings before the latency work (detection in onnxruntime on a 1280 px copy,
    recognition in rapidocr's own recogniser padded to 48x320 in batches of 6); 'default' = rapidocr's own config
    (only model paths and thread count pinned)."""
    out = {}
    default = _plain_rapidocr(eng)
    if default is not None:
        out["rapidocr default config"] = lambda img: default(img, use_cls=False)
    prev = _plain_rapidocr(eng, {"Global.use_cls": False, "Det.limit_type": "max", "Det.limit_side_len": 1280,
                                 "Rec.rec_img_shape": [3, 48, 320], "Rec.rec_batch_num": 6,
                                 "EngineConfig.onnxruntime.inter_op_num_threads": 1})
    if prev is not None:
        out["rapidocr, previous settings"] = lambda img: prev(img, use_cls=False)
    return out


def _interleaved(fns: dict, repeat: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each call once to warm up (first-run allocations are not what a running worker pays), then `repeat` rounds
    with the calls interleaved; returns every time and the median per call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times, {k: statistics.median(v) for k, v in times.items()}


def _page_latency(label: str, pick, eng, baselines: dict, repeat: int) -> dict:
    """extract() end to end on a page file, next to raw rapidocr calls on the same decoded, prepared page.
    Rounds are interleaved (every variant once per round) so that load from other work hits all of them alike."""
    from ocr import extract
    from ocr.inputs import load_pages
    from ocr.preprocess import prepare

    sid, f = pick
    data = f.read_bytes()
    img = prepare(load_pages(data)[1][0].image)[0]
    fns = {"extract() end to end": lambda: extract(data), "raw rapidocr, engine settings": lambda: eng.raw(img)}
    fns.update({k: (lambda fn=fn: fn(img)) for k, fn in baselines.items()})
    times, med = _interleaved(fns, repeat)
    pipe = med["extract() end to end"]
    print(f"  {label} page {sid} (OCR input {img.shape[1]}x{img.shape[0]}):")
    for k, v in times.items():
        ratio = "" if k.startswith("extract") else f"  extract/this = {pipe / med[k]:.2f}"
        target = ""
        if k.startswith("extract") and label == "photo":
            target = f"  (target <= 1.5 s median) {'PASS' if pipe <= 1.5 else 'FAIL'}"
        print(f"    {k:32s} median {med[k]:.2f} s  min {min(v):.2f} s{ratio}{target}")
    out = eng.raw(img)
    el = getattr(out, "elapse_list", None) or [None, None, None]
    rep = extract(data)
    st = rep.source["pages"][0]
    print(f"    one extract(): preprocess {st.get('seconds_preprocess')} s, OCR {st.get('seconds_ocr')} s "
          f"(detection {el[0] or 0:.2f} s + recognition {el[2] or 0:.2f} s of {len(out.txts or [])} lines in a "
          f"raw call), layout+parse {st.get('seconds_layout')} s, total {rep.source.get('seconds')} s")
    r = {f"{label}_page": sid, f"{label}_median": pipe, f"{label}_min": min(times["extract() end to end"]),
         f"{label}_raw_median": med["raw rapidocr, engine settings"]}
    for k, key in (("rapidocr, previous settings", "raw_previous"), ("rapidocr default config", "raw_default")):
        if k in med:
            r[f"{label}_{key}_median"] = med[k]
    return r


def _screenshot_latency(pick, eng, repeat: int) -> dict:
    """A long screenshot end to end, next to raw rapidocr on the whole image and on the tiles extract() reads."""
    from ocr import extract
    from ocr.inputs import load_pages
    from ocr.screenshot import tile_spans

    sid, f, screens = pick
    data = f.read_bytes()
    img = load_pages(data)[1][0].image
    tiles = [img[y0:y1] for y0, y1, _, _ in tile_spans(img.shape[0], img.shape[1])]
    fns = {"extract() end to end": lambda: extract(data),
           "raw rapidocr, whole image": lambda: eng.raw(img),
           f"raw rapidocr, {len(tiles)} tiles": lambda: [eng.raw(t) for t in tiles]}
    times, med = _interleaved(fns, repeat)
    pipe = med["extract() end to end"]
    print(f"  screenshot {sid} ({img.shape[1]}x{img.shape[0]}, {screens} screens tall):")
    for k, v in times.items():
        ratio = "" if k.startswith("extract") else f"  extract/this = {pipe / med[k]:.2f}"
        target = f"  (target <= 3 s median) {'PASS' if pipe <= 3.0 else 'FAIL'}" if k.startswith("extract") else ""
        print(f"    {k:32s} median {med[k]:.2f} s  min {min(v):.2f} s{ratio}{target}")
    rep = extract(data)
    st = rep.source["pages"][0]
    print(f"    one extract(): OCR {st.get('seconds_ocr')} s, layout+parse {st.get('seconds_layout')} s, "
          f"{len(rep.results)} rows, total {rep.source.get('seconds')} s")
    return {"screenshot_page": sid, "screenshot_median": pipe, "screenshot_min": min(times["extract() end to end"]),
            "screenshot_raw_whole_median": med["raw rapidocr, whole image"],
            "screenshot_raw_tiles_median": med[f"raw rapidocr, {len(tiles)} tiles"]}


def _latencies(items: list, eng, repeat: int) -> dict:
    """Photo and scanned-PDF pages (pipeline vs raw rapidocr on the same page, interleaved), a long screenshot and
    a born-digital PDF page."""
    from ocr import extract

    res: dict = {}
    print(f"\n== latency ({repeat} interleaved rounds; median / min; load before: {_load()})")
    photo = next(((s, f) for s, f, t in items if t.get("condition") == "photo"), None) or \
        next(((s, f) for s, f, t in items if f.suffix.lower() in (".jpg", ".jpeg", ".png")), None)
    scan = next(((s, f) for s, f, t in items if t.get("source_kind") == "scan_pdf"), None)
    baselines = _baselines(eng)
    for label, pick in (("photo", photo), ("scan", scan)):
        if pick:
            res.update(_page_latency(label, pick, eng, baselines, repeat))
    shots = [(t.get("render", {}).get("screens_tall") or 0, s, f) for s, f, t in items
             if t.get("condition") == "app_screenshot" and (t.get("render", {}).get("screens_tall") or 0) <= 3.0]
    if shots:
        screens, sid, f = max(shots)
        res.update(_screenshot_latency((sid, f, screens), eng, repeat))
    pdf = next(((s, f) for s, f, t in items if t.get("source_kind") == "digital_pdf"), None)
    if pdf:
        data = pdf[1].read_bytes()
        ts = timeit(lambda: extract(data), max(10, repeat))
        res.update(pdf_page=pdf[0], pdf_median=statistics.median(ts), pdf_min=min(ts))
        print(f"  digital PDF page {pdf[0]}: extract() median {statistics.median(ts) * 1000:.1f} ms  "
              f"min {min(ts) * 1000:.1f} ms (target <= 100 ms) {'PASS' if statistics.median(ts) <= 0.1 else 'FAIL'}")
    print(f"  load after: {_load()}")
    return res


def _score(score: Path, pred: Path, truth: Path) -> tuple[str, float | None]:
    r = subprocess.run([sys.executable, str(score), str(pred), str(truth)], capture_output=True, text=True, check=False)
    out = r.stdout + ("" if r.returncode == 0 else r.stderr)
    f1 = None
    for line in r.stdout.splitlines():
        if line.startswith("field_f1="):
            f1 = float(line.split("=")[1])
    return out, f1


def timeit(fn, n: int) -> list[float]:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def rss_worker(argv: list[str]) -> int:
    from ocr import extract
    from ocr.engine import get_engine
    from ocr.errors import OCRError

    n, files = int(argv[0]), argv[1:]
    get_engine()
    before = peak_rss_mb()
    for k in range(n):
        try:
            extract(Path(files[k % len(files)]).read_bytes())
        except OCRError:
            pass
    print(f"RSS {before:.1f} {peak_rss_mb():.1f}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rss-worker"]:
        return rss_worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="+")
    ap.add_argument("--out", help="prediction dir (default: a temporary dir)")
    ap.add_argument("--repeat", type=int, default=5, help="latency rounds (default 5)")
    ap.add_argument("--rss-pages", type=int, default=50, help="pages in a row for the peak-RSS figure (default 50)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="only the first N samples of each set (smoke runs)")
    ap.add_argument("--latency-only", action="store_true", help="skip the dev-set pass and scoring")
    ap.add_argument("--skip-latency", action="store_true", help="skip the latency figures (scores and RSS only)")
    a = ap.parse_args(argv)

    sets = [Path(d) for d in a.dataset if Path(d).is_dir()]
    for d in a.dataset:
        if not Path(d).is_dir():
            print(f"SKIP: dataset directory {d} not found (the lab-sheets dev sets live in shared/datasets/)")
    if not sets:
        return 0
    from ocr import extract
    from ocr.engine import get_engine
    from ocr.errors import OCRError

    per_set = {ds: samples(ds)[:a.limit] if a.limit else samples(ds) for ds in sets}
    items = [it for v in per_set.values() for it in v]
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="ocr-pred-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average: {os.getloadavg()}  cpus: {os.cpu_count()}  samples: {len(items)}  predictions -> {out}")

    t = time.perf_counter()
    eng = get_engine()
    print(f"engine load: {time.perf_counter() - t:.2f} s  {json.dumps(eng.info.as_dict())}")

    res: dict = {}
    per_kind: dict[str, list[float]] = {}
    for ds, its in ([] if a.latency_only else per_set.items()):
        pred = out / ds.name
        pred.mkdir(parents=True, exist_ok=True)
        print(f"\n== {ds.name}: {len(its)} samples")
        for sid, f, truth in its:
            data = f.read_bytes()
            t = time.perf_counter()
            try:
                rep = extract(data, filename_hint=f.name)
                dt = time.perf_counter() - t
                (pred / f"{sid}.json").write_text(json.dumps(rep.to_dict(), ensure_ascii=False), encoding="utf-8")
                status = f"{len(rep.results)} rows{' review' if rep.needs_review else ''}"
            except OCRError as e:
                dt = time.perf_counter() - t
                status = f"error {e.code}"
            per_kind.setdefault(truth.get("condition", "?"), []).append(dt)
            print(f"  {sid:10s} {truth.get('condition', '?'):14s} {dt:6.2f} s  {status}", flush=True)
        score = ds / "score.py"
        if score.exists():
            text, f1 = _score(score, pred, ds)
            print(f"\n== scores: {ds.name}")
            print(text)
            res[f"field_f1:{ds.name}"] = f1
        else:
            print(f"(no score.py in {ds}; predictions written only)")
    if not a.latency_only and len(sets) > 1 and (sets[0] / "score.py").exists():
        # both sets together, for the review-flag figure over all rows
        both = Path(tempfile.mkdtemp(prefix="ocr-both-"))
        (both / "pred").mkdir()
        (both / "truth").mkdir()
        for ds, its in per_set.items():
            for sid, f, _ in its:
                if (out / ds.name / f"{sid}.json").exists():
                    (both / "pred" / f"{sid}.json").symlink_to(out / ds.name / f"{sid}.json")
                (both / "truth" / f"{sid}.json").symlink_to(f.with_suffix(".json").resolve())
        text, f1 = _score(sets[0] / "score.py", both / "pred", both / "truth")
        line = next((x for x in text.splitlines() if x.startswith("needs_review:")), "needs_review: (not printed)")
        print(f"== all sets together ({', '.join(d.name for d in sets)}): {line}  field_f1={f1}")
        res["needs_review_all"] = line

    if per_kind:
        print("== time per file in the run above (s, median by condition)")
        for k, v in sorted(per_kind.items()):
            print(f"  {k:14s} n={len(v):2d} median {statistics.median(v):.2f}  min {min(v):.2f}")

    if not a.skip_latency:
        res.update(_latencies(items, eng, a.repeat))

    # ---- peak RSS over N pages in a row, in a fresh process (a worker's view: one engine, nothing else loaded)
    if not a.skip_rss and a.rss_pages > 0:
        files = [str(f) for _, f, t in items if t.get("source_kind") != "digital_pdf"] or [str(f) for _, f, _ in items]
        t = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--rss-worker", str(a.rss_pages), *files], capture_output=True,
                           text=True, check=False)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RSS ")), None)
        if line is None:
            print(f"== peak RSS: worker failed: {r.stderr[-2000:]}")
        else:
            _, before, rss = line.split()
            rss = float(rss)
            res.update(rss_pages=a.rss_pages, peak_rss_mb=rss)
            print(f"== peak RSS of a fresh worker process after {a.rss_pages} OCR pages in a row: {rss:.0f} MB "
                  f"(after engine load: {float(before):.0f} MB; {(time.perf_counter() - t) / a.rss_pages:.2f} s/page) "
                  f"(target < 1536 MB) {'PASS' if rss < 1536 else 'FAIL'}")
    print("RESULT_JSON: " + json.dumps(res))
    for k, v in res.items():
        if k.startswith("field_f1:") and v is not None:
            print(f"{k.split(':', 1)[1]}: field_f1={v:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
