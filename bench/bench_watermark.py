"""Watermarking a grantee's download (issue 16): time to mark a 50-page PDF, and its ratio to a plain
decrypt-and-send of the same stored file.

    python bench/bench_watermark.py [--pages 50] [--repeat 7] [--quick]

The PDF is built once: `--pages` A4 pages, each with a text layer (a lab-sheet-like table) and a scanned-looking
JPEG image of its own (~100 KB), so it has the shape of a real multi-page report. It is sealed with kms.stream under a
fresh data key, as the vault stores it. Two paths, same stored bytes, median of `--repeat` runs:

1. plain (what the patient's own download does): decrypt the blob segment by segment into the response body;
2. marked (what a doctor's or escort's download does, vault/records/watermark.py `render`): decrypt, overlay the
   mark on every page, set the download id, write the new PDF.

Target: marked ≤ 1 s for 50 pages (absolute, on this machine), and the same-run ratio marked/plain is printed.
Exit status 0; a missed target prints FAIL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_SECONDS = 1.0


def build_pdf(pages: int) -> bytes:
    import pikepdf
    from PIL import Image, ImageDraw

    pdf = pikepdf.new()
    font = pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1,
                                                BaseFont=pikepdf.Name.Helvetica))

    def scan_of(n: int):
        scan = Image.new("L", (1240, 1754), 250)
        draw = ImageDraw.Draw(scan)
        for y in range(200, 1600, 40):
            draw.line((100, y, 1140, y), fill=120, width=2)
            draw.text((120, y + 8), f"page {n} WBC 11.{y} 10^9/L 3.5-9.5", fill=30)
        jpeg = io.BytesIO()
        scan.save(jpeg, "JPEG", quality=60)
        return pdf.make_indirect(pikepdf.Stream(pdf, jpeg.getvalue(), Type=pikepdf.Name.XObject,
                                                Subtype=pikepdf.Name.Image, Width=1240, Height=1754,
                                                BitsPerComponent=8, ColorSpace=pikepdf.Name.DeviceGray,
                                                Filter=pikepdf.Name.DCTDecode))

    for n in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
        rows = b" ".join(b"BT /F1 9 Tf 60 %d Td (row %d of page %d: 5.%02d mmol/L) Tj ET" % (780 - 14 * r, r, n, r)
                         for r in range(40))
        page = pdf.pages[n]
        page.obj.Resources = pikepdf.Dictionary(XObject=pikepdf.Dictionary(Scan=scan_of(n)),
                                                Font=pikepdf.Dictionary(F1=font))
        page.obj.Contents = pdf.make_stream(b"q 595 0 0 842 0 0 cm /Scan Do Q " + rows)
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 10 pages, 3 runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.pages, args.repeat = 10, 3

    from kms.keys import DataKey
    from kms.stream import StreamEncryptor, iter_decrypt
    from vault.records import watermark

    data = build_pdf(args.pages)
    key = DataKey(os.urandom(32), key_id=os.urandom(16), version=1, suite=1)
    aad = b"bench/watermark"
    encryptor = StreamEncryptor(key, aad)
    blob = encryptor.update(data) + encryptor.finalize()
    print(f"bench_watermark: {args.pages}-page PDF, {len(data) / 1e6:.2f} MB stored, median of {args.repeat}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")

    def plain() -> int:
        sent = 0
        for piece in iter_decrypt(key, io.BytesIO(blob), aad):
            sent += len(piece)  # what the response body would carry
        return sent

    def marked() -> int:
        mark = watermark.Mark(grantee="dr.bench", at=dt.datetime.now(dt.UTC),
                              grant_id="0b6f5a9e-1111-4a3b-9c1d-2e3f4a5b6c7d", purpose="会诊 bench",
                              download_id=os.urandom(16).hex())
        stored = b"".join(iter_decrypt(key, io.BytesIO(blob), aad))
        return len(watermark.mark(stored, "application/pdf", mark))

    def timed(fn) -> list[float]:
        fn()  # warm-up (imports, font objects)
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - started)
        return runs

    plain_runs, marked_runs = timed(plain), timed(marked)
    p, m = statistics.median(plain_runs), statistics.median(marked_runs)
    size = marked()
    print(f"plain decrypt-and-send: median {p * 1000:.1f} ms (best {min(plain_runs) * 1000:.1f})")
    print(f"marked (decrypt + watermark {args.pages} pages): median {m * 1000:.1f} ms "
          f"(best {min(marked_runs) * 1000:.1f}); marked copy {size / 1e6:.2f} MB")
    print(f"ratio marked/plain: {m / p:.1f}x")
    verdict = "PASS" if args.quick or m <= TARGET_SECONDS * args.pages / 50 else "FAIL"
    print(f"target (50 pages <= {TARGET_SECONDS:.1f} s): {verdict}")
    print(f"RESULT_JSON: {{\"pages\": {args.pages}, \"plain_ms\": {p * 1000:.2f}, \"marked_ms\": {m * 1000:.2f}, "
          f"\"ratio\": {m / p:.2f}, \"verdict\": \"{verdict}\"}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
