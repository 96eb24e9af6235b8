"""`healthvault ocr FILE [FILE...] --json` (also `python -m ocr FILE... --json`).

With --json: one compact JSON object per file, one per line (JSON Lines), in argument order. A file that cannot be
read prints {"file": ..., "error": {"code": ..., "message": ...}} on its line instead and the exit status is 1.
Without --json: a short human-readable table per file.
"""
from __future__ import annotations

import json
import sys

import click


@click.command("ocr")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per file, one per line")
@click.option("--pretty", is_flag=True, help="with --json: indent the JSON (then objects are separated by newlines)")
def ocr_command(files, as_json, pretty):
    """Extract lab results from lab-report photos, scans or PDFs (offline)."""
    from . import extract
    from .errors import OCRError

    failed = False
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            rep = extract(data, filename_hint=path)
        except (OCRError, OSError) as e:
            failed = True
            code = getattr(e, "code", "io_error")
            if as_json:
                click.echo(json.dumps({"file": path, "error": {"code": code, "message": str(e)}}, ensure_ascii=False))
            else:
                click.echo(f"{path}: error {code}: {e}", err=True)
            continue
        if as_json:
            d = rep.to_dict()
            d = {"file": path, **d}
            click.echo(json.dumps(d, ensure_ascii=False, indent=2 if pretty else None))
        else:
            click.echo(f"== {path}  ({len(rep.results)} results{', needs review' if rep.needs_review else ''})")
            for k, v in rep.header.items():
                if v is not None:
                    click.echo(f"  {k}: {v}")
            for r in rep.results:
                rng = r.ref_text or ""
                click.echo(f"  {r.seq:>3} {r.name or '':<14} {r.code or '':<8} {r.value or '':>10} "
                           f"{r.unit or '':<8} {rng:<14} {r.flag or ''}{'  ?' if r.needs_review else ''}")
            for w in rep.warnings:
                click.echo(f"  warning: {w}")
    sys.exit(1 if failed else 0)


def main(argv=None):  # pragma: no cover
    ocr_command.main(args=argv, prog_name="healthvault ocr")
