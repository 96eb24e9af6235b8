"""Test helpers: valid identifiers, tiny real files, the register → login flow over HTTP, an audit collector."""

from __future__ import annotations

import datetime as dt
import json
import random
import socket
import struct
import threading
import zlib

from vault.patients.identifiers import check_digit


def make_id_number(region: str = "110105", birth: str | None = None, seq: str | None = None) -> str:
    """A valid GB 11643 number: random birth date and sequence unless given (~20 million combinations, so two
    patients of one test do not collide on the unique blind index the way a 3-digit sequence alone did)."""
    if birth is None:
        day = dt.date(1950, 1, 1) + dt.timedelta(days=random.randint(0, 20_000))
        birth = day.strftime("%Y%m%d")
    seq = seq or f"{random.randint(0, 999):03d}"
    body = region + birth + seq
    return body + check_digit(body)


def make_phone() -> str:
    return "138" + f"{random.randint(0, 99_999_999):08d}"


def png_bytes(marker: bytes = b"") -> bytes:
    """A real PNG: 1x1, or one grey row of len(marker) pixels whose values are the marker's bytes, stored in an
    uncompressed deflate block so the marker appears verbatim in the file (a plaintext canary that upload hygiene
    keeps: it is pixel data, not metadata). Nothing for the hygiene pass to remove: stored byte for byte."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width = max(1, len(marker))
    ihdr = struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" + marker, 0) if marker else zlib.compress(b"\0\0")
    parts = [chunk(b"IHDR", ihdr), chunk(b"IDAT", pixels), chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(parts)


def stored(data: bytes) -> bytes:
    """What the vault stores for an upload of `data`: its sanitized copy (vault/records/hygiene.py)."""
    from vault.records import hygiene, sniff

    return hygiene.clean(data, kind=sniff.sniff(data[: sniff.SNIFF_BYTES]))


def real_jpeg(size: tuple[int, int] = (8, 8), **save_options) -> bytes:
    """A decodable JPEG drawn by Pillow."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "JPEG", **save_options)
    return out.getvalue()


def pdf_bytes(marker: str = "hello") -> bytes:
    """A minimal one-page PDF whose content stream shows `marker`."""
    content = f"BT /F1 12 Tf 72 720 Td ({marker}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def jpeg_bytes(payload: bytes = b"") -> bytes:
    """Bytes that sniff as JPEG (SOI + APP0 JFIF + a COM segment); enough for storage tests."""
    com = b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + com + b"\xff\xd9"


PASSWORD = "Str0ng-Passw0rd!"


def consents(client, *, ocr: bool = True) -> dict:
    """The separate consents (PIPL-1) on the notice version the server shows now."""
    notice = client.get("/v1/privacy-notice")
    assert notice.status_code == 200, notice.text
    return {"notice_version": notice.json()["version"], "health_data": True, "id_number": True, "ocr": ocr}


def register(client, *, username: str, real_name: str = "张三", id_number: str | None = None,
             phone: str | None = None, password: str = PASSWORD, ocr: bool = True) -> dict:
    body = {"username": username, "password": password, "real_name": real_name,
            "id_number": id_number or make_id_number(), "phone": phone or make_phone(),
            "consents": consents(client, ocr=ocr)}
    response = client.post("/v1/patients/register", json=body)
    assert response.status_code == 201, response.text
    return {**body, "patient_id": response.json()["patient_id"]}


def login(client, username: str, password: str = PASSWORD, *, otp: str | None = None) -> dict:
    body = {"username": username, "password": password, **({"otp": otp} if otp else {})}
    response = client.post("/v1/auth/login", json=body)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def upload(client, headers: dict, data: bytes, *, category: str = "lab_report", title: str | None = None,
           filename: str = "scan.bin", content_type: str = "application/octet-stream", label: str | None = None):
    form = {"category": category}
    if label is not None:
        form["label"] = label
    if title is not None:
        form["title"] = title
    return client.post("/v1/records", headers=headers, data=form, files={"file": (filename, data, content_type)})


def totp_code(secret: str, moment) -> str:
    import pyotp

    return pyotp.TOTP(secret).at(moment.timestamp())


def staff(client, vault, role: str, username: str, *, password: str = PASSWORD) -> dict:
    """Create a staff account, enrol and activate its TOTP through the API, sign in with a code: bearer headers."""
    from vault.accounts import service as accounts
    from vault.identity import RequestContext

    with vault.session() as session:
        accounts.create(session, vault, username=username, password=password, role=role,
                        ctx=RequestContext(request_id="test"))
    enrolled = client.post("/v1/auth/totp/enroll", json={"username": username, "password": password})
    assert enrolled.status_code == 200, enrolled.text
    secret = enrolled.json()["secret"]
    step = 30
    now = vault.clock()
    activate = client.post("/v1/auth/totp/activate",
                           json={"username": username, "password": password, "otp": totp_code(secret, now)})
    assert activate.status_code == 204, activate.text
    later = now.timestamp() + step  # the next step: the activation code cannot be replayed
    import datetime as dt

    code = totp_code(secret, dt.datetime.fromtimestamp(later, dt.UTC))
    response = client.post("/v1/auth/login", json={"username": username, "password": password, "otp": code})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}", "_secret": secret}


class SinkListener:
    """A real collector for audit/sink.py on a free local port: UDP syslog frames or TCP JSON lines."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.received: list[bytes] = []
        family = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, family)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if kind == "tcp":
            self.sock.listen(1)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if self.kind == "udp":
                    self.received.append(self.sock.recv(65536))
                else:
                    if conn is None:
                        conn, _ = self.sock.accept()
                        conn.settimeout(0.2)
                    data = conn.recv(65536)
                    if data:
                        self.received.append(data)
            except TimeoutError:
                continue

    def events(self) -> list[dict]:
        self.stop.set()
        self.thread.join()
        self.sock.close()
        if self.kind == "udp":
            return [json.loads(frame.split(b" - audit - ", 1)[1]) for frame in self.received]
        return [json.loads(line) for line in b"".join(self.received).splitlines() if line]
