"""The client side of bench/bench_soak.py: a mixed, stateful workload run in a process of its own (not the server's,
not the bench's: no shared GIL), on bench/loadgen.py's wire (`loadgen.Connection`).

    python bench/soak_workload.py --port P --clients N --start EPOCH --until EPOCH [--loader I]
        (the staff tokens come as JSON in $SOAK_STAFF: {"doctors": [{"username", "token"}], "auditor": token,
         "xff": bool})

Each of the N virtual clients is a patient's session followed by the doctor it consults, over and over:

  register   GET /v1/privacy-notice, POST /v1/patients/register (consents as the notice asks, OCR declined so the
             bench measures the API, not OCR), POST /v1/auth/login; a new patient every `CYCLES_PER_PATIENT` cycles
  a cycle    upload a small generated PDF or PNG → list own records → read the record → download its content (the
             SHA-256 the upload answered is checked) → grant it to a doctor (view + download, one day) → the doctor
             lists what is shared with them (the new record must be there) → reads it → downloads it (a watermarked
             PDF) → the patient revokes the grant → the doctor's next read is refused (404)

One auditor (in loader 0 only) searches the trail in a loop with a second of think time: the last minute's events,
then the doctors' downloads. Every request counts under its operation name, with its expected status; anything else
(another status, an I/O error, a failed content check) is an error by operation and kind.

With "xff", each patient's requests carry an X-Forwarded-For address of its own (as behind a reverse proxy: the
per-client rate limits then apply per patient, as in a deployment); the bench says whether the server trusts it.
Prints one JSON object: the samples [op, start (s after --start), latency (ms), status], the errors, and counts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import random
import resource
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from _server import PASSWORD, multipart_epilogue, multipart_preamble, nth_id_number, small_pdf

# A patient registers once and then comes back many times: 3 requests to register, 12 per cycle, so the two password
# hashes (argon2id at the vault's cost, seconds on a busy 2-CPU machine) are ~0.5 % of the requests and the p99 of
# all requests stays a figure of the other operations rather than jumping between the two populations.
CYCLES_PER_PATIENT = 30
AUDITOR_THINK_SECONDS = 1.0
ANSWER_ERRORS = (ValueError, KeyError, TypeError)
IO_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, loadgen.ProtocolError, ValueError)
# Operation → the one status a correct server answers.
EXPECTED = {"notice": 200, "register": 201, "login": 200, "upload": 201, "list": 200, "read": 200, "content": 200,
            "grant": 201, "shared": 200, "doctor_read": 200, "doctor_download": 200, "revoke": 200,
            "revoked_read": 404, "audit_search": 200}


class Abort(Exception):
    """This cycle cannot go on (an answer it needed was wrong); the error is counted already."""


class Run:
    def __init__(self, args: argparse.Namespace, staff: dict) -> None:
        self.args = args
        self.doctors = staff["doctors"]
        self.auditor = staff.get("auditor")
        self.xff = bool(staff.get("xff"))
        self.samples: list[list] = []
        self.errors: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.counts = {"patients": 0, "cycles": 0, "uploads_pdf": 0, "uploads_png": 0}
        self.serial = itertools.count()
        self.pngs = [_png(seed) for seed in range(16)]

    def done(self) -> bool:
        return time.time() >= self.args.until

    def error(self, op: str, kind: str, example: str = "") -> None:
        key = f"{op} {kind}"
        self.errors[key] = self.errors.get(key, 0) + 1
        if example and key not in self.examples:
            self.examples[key] = example[:200]

    async def call(self, conn: loadgen.Connection, op: str, method: str, path: str, *, headers: list[str],
                   body: bytes = b"", content_type: str | None = None) -> bytes:
        """One request: timed, checked against its expected status; the body, or Abort after counting the error."""
        if content_type:
            headers = [*headers, f"Content-Type: {content_type}"]
        started = time.time()
        t0 = time.perf_counter()
        try:
            status, data = await conn.request(method, path, headers=headers, body=body)
        except IO_ERRORS as exc:
            self.error(op, f"io:{type(exc).__name__}")
            await asyncio.sleep(0.1)
            raise Abort from exc
        latency = (time.perf_counter() - t0) * 1000
        self.samples.append([op, round(started - self.args.start, 3), round(latency, 3), status])
        if status != EXPECTED[op]:
            self.error(op, f"status:{status}", _problem_type(data))
            raise Abort
        return data


def _problem_type(data: bytes) -> str:
    """The problem's `type` (never its detail: the bench prints it)."""
    try:
        return str(json.loads(data).get("type", ""))
    except (ValueError, AttributeError):
        return ""


def _png(seed: int) -> bytes:
    """A small real photo-like PNG (noise and a few blocks), different per seed."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.effect_noise((160, 120), 40 + seed).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(140), rng.randrange(100)
        draw.rectangle((x, y, x + rng.randrange(10, 40), y + rng.randrange(8, 30)), fill=(rng.randrange(256),) * 3)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _json(data: dict) -> bytes:
    return json.dumps(data).encode()


def _auth(token: str, address: str | None) -> list[str]:
    headers = [f"Authorization: Bearer {token}"]
    return headers + [f"X-Forwarded-For: {address}"] if address else headers


async def new_patient(run: Run, conn: loadgen.Connection) -> list[str]:
    """Register a patient as the tests do (the notice's version, the separate consents) and sign in: the headers of
    its requests (its token and, with "xff", its own client address)."""
    serial = next(run.serial)
    n = run.args.loader * 1_000_000 + serial
    address = f"10.{run.args.loader % 200}.{serial // 250 % 250}.{1 + serial % 250}" if run.xff else None
    origin = [f"X-Forwarded-For: {address}"] if address else []
    notice = json.loads(await run.call(conn, "notice", "GET", "/v1/privacy-notice", headers=origin))
    username = f"soak.{run.args.loader}.{n}.{secrets.token_hex(2)}"
    await run.call(conn, "register", "POST", "/v1/patients/register", headers=origin, content_type="application/json",
                   body=_json({"username": username, "password": PASSWORD, "real_name": "王测试",
                               "id_number": nth_id_number(n), "phone": f"137{n % 10**8:08d}",
                               "consents": {"notice_version": notice["version"], "health_data": True,
                                            "id_number": True, "ocr": False}}))
    body = await run.call(conn, "login", "POST", "/v1/auth/login", headers=origin, content_type="application/json",
                          body=_json({"username": username, "password": PASSWORD}))
    run.counts["patients"] += 1
    return _auth(json.loads(body)["access_token"], address)


async def cycle(run: Run, patient: loadgen.Connection, doctor: loadgen.Connection, me: list[str], dr: list[str],
                dr_name: str, n: int) -> None:
    if n % 2:
        data, kind, name = small_pdf(b"soak lab report %d " % n + secrets.token_hex(64).encode()), "pdf", "r.pdf"
        category, ctype = "lab_report", "application/pdf"
    else:
        data, kind, name, category, ctype = run.pngs[n % len(run.pngs)], "png", "r.png", "exam_report", "image/png"
    boundary = "soak" + secrets.token_hex(12)
    body = multipart_preamble(boundary, category, filename=name, content_type=ctype) + data \
        + multipart_epilogue(boundary)
    created = json.loads(await run.call(patient, "upload", "POST", "/v1/records", headers=me, body=body,
                                        content_type=f"multipart/form-data; boundary={boundary}"))
    run.counts[f"uploads_{kind}"] += 1
    record = f"/v1/records/{created['record_id']}"
    await run.call(patient, "list", "GET", "/v1/records?limit=20", headers=me)
    await run.call(patient, "read", "GET", record, headers=me)
    content = await run.call(patient, "content", "GET", record + "/content", headers=me)
    if hashlib.sha256(content).hexdigest() != created["sha256"]:
        run.error("content", "check:sha256-differs")
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    grant = json.loads(await run.call(patient, "grant", "POST", "/v1/grants", headers=me,
                                      content_type="application/json",
                                      body=_json({"grantee": dr_name, "record_ids": [created["record_id"]],
                                                  "actions": ["view", "download"], "purpose": "复诊 会诊 soak",
                                                  "expires_at": expires})))
    shared = json.loads(await run.call(doctor, "shared", "GET", "/v1/shared", headers=dr))
    if created["record_id"] not in {item["record_id"] for item in shared}:
        run.error("shared", "check:granted-record-missing")
    await run.call(doctor, "doctor_read", "GET", record, headers=dr)
    marked = await run.call(doctor, "doctor_download", "GET", record + "/content", headers=dr)
    if not marked.startswith(b"%PDF-"):
        run.error("doctor_download", "check:not-a-marked-pdf")
    await run.call(patient, "revoke", "DELETE", f"/v1/grants/{grant['grant_id']}", headers=me)
    await run.call(doctor, "revoked_read", "GET", record, headers=dr)
    run.counts["cycles"] += 1


async def patient_client(run: Run, index: int) -> None:
    args = run.args
    patient = loadgen.Connection(args.host, args.port)
    doctor = loadgen.Connection(args.host, args.port)
    staff = run.doctors[(args.loader * args.clients + index) % len(run.doctors)]
    dr = _auth(staff["token"], f"10.250.0.{1 + index % 250}" if run.xff else None)
    n = 0
    # The first patients stop after 1/N … N/N of the cycles, so that later registrations are spread out, not N at once.
    budget = max(1, round(CYCLES_PER_PATIENT * (index + 1) / args.clients))
    while not run.done():
        try:
            me = await new_patient(run, patient)
        except (Abort, *ANSWER_ERRORS) as exc:
            if not isinstance(exc, Abort):
                run.error("register", f"client:{type(exc).__name__}")
            await asyncio.sleep(1.0)  # a refused registration must not become a tight loop
            continue
        for _ in range(budget):
            if run.done():
                break
            n += 1
            try:
                await cycle(run, patient, doctor, me, dr, staff["username"], n)
            except (Abort, *ANSWER_ERRORS) as exc:
                if not isinstance(exc, Abort):  # an answer of the expected status without the expected shape
                    run.error("cycle", f"client:{type(exc).__name__}")
                await asyncio.sleep(0.1)
        budget = CYCLES_PER_PATIENT
    patient.close()
    doctor.close()


async def auditor_client(run: Run, token: str) -> None:
    conn = loadgen.Connection(run.args.host, run.args.port)
    auth = _auth(token, "10.251.0.1" if run.xff else None)
    queries = itertools.cycle(["since={since}&limit=100", "action=record.download&outcome=allow&limit=50"])
    while not run.done():
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat().replace("+", "%2B")
        try:
            await run.call(conn, "audit_search", "GET", "/v1/audit/events?" + next(queries).format(since=since),
                           headers=auth)
        except Abort:
            pass
        await asyncio.sleep(AUDITOR_THINK_SECONDS)
    conn.close()


async def main_async(run: Run) -> None:
    await asyncio.sleep(max(0.0, run.args.start - time.time()))
    tasks = [patient_client(run, i) for i in range(run.args.clients)]
    if run.auditor and run.args.loader == 0:
        tasks.append(auditor_client(run, run.auditor))
    await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--loader", type=int, default=0, help="this loader's index (distinct patients per loader)")
    parser.add_argument("--start", type=float, required=True, help="wall-clock time the workload starts (epoch s)")
    parser.add_argument("--until", type=float, required=True, help="wall-clock time it stops starting requests")
    args = parser.parse_args(argv)
    staff = json.loads(os.environ.get("SOAK_STAFF", "{}"))
    if not staff.get("doctors"):
        parser.error("$SOAK_STAFF must name at least one doctor and its token")
    loadgen._install_uvloop()
    run = Run(args, staff)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    asyncio.run(main_async(run))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({"loader": args.loader, "samples": run.samples, "errors": run.errors, "examples": run.examples,
               "counts": run.counts, "uvloop": "uvloop" in sys.modules,
               "client_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
