"""Forwarding committed audit events to a central collector (AUD-7).

Owns the optional copy of every event sent, after its transaction commits, to syslog (RFC 5424 over UDP) or to a TCP
socket as JSON Lines. The payload is exactly the exported event (pseudonyms, codes, random ids, hashes): it never
carries PHI. Delivery is best effort and never blocks or fails the audited action — the database trail is the record
of truth; the collector is a second copy.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import urllib.parse
from typing import Any

log = logging.getLogger("healthvault.audit.sink")
SCHEMES = ("syslog+udp", "tcp")


class Sink:
    def __init__(self, url: str, *, hostname: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in SCHEMES or not parsed.hostname or not parsed.port:
            raise ValueError(f"audit sink must be one of {SCHEMES} with host and port, e.g. syslog+udp://host:514")
        self.scheme, self.address = parsed.scheme, (parsed.hostname, parsed.port)
        self.hostname = hostname or socket.gethostname()
        self._lock = threading.Lock()
        self._tcp: socket.socket | None = None

    def _syslog_frame(self, payload: str) -> bytes:
        # RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG; facility 13 (log audit),
        # severity 6 (informational) -> PRI 110.
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"<110>1 {stamp} {self.hostname} healthvault - audit - {payload}".encode()

    def send(self, events: list[dict[str, Any]]) -> None:
        lines = [json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=True) for e in events]
        try:
            with self._lock:
                if self.scheme == "syslog+udp":
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                        for line in lines:
                            udp.sendto(self._syslog_frame(line), self.address)
                else:
                    if self._tcp is None:
                        self._tcp = socket.create_connection(self.address, timeout=2)
                    self._tcp.sendall("".join(line + "\n" for line in lines).encode())
        except OSError as exc:
            log.warning("audit sink delivery failed: %s", type(exc).__name__)
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._tcp is not None:
                self._tcp.close()
                self._tcp = None
