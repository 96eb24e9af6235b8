"""The TOTP enrolment QR code, drawn on the server as SVG (segno): no image service, no script, no data URL.

Owns turning an otpauth:// URI into inline SVG markup. The URI holds the new secret: it is rendered into that one
response (no-store) and never logged, stored or put in a URL.
"""

from __future__ import annotations

import io

import segno
from markupsafe import Markup


def svg(uri: str) -> Markup:
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=6, border=4, xmldecl=False, svgns=True,
                                    title="QR", svgclass="qr", lineclass=None, dark="#000", light="#fff")
    return Markup(out.getvalue().decode("utf-8"))  # noqa: S704 - segno's own markup from a URI it encodes
