"""Abuse detection and alerting (IP-4): bursts of denials and break-glass claims.

Owns deciding when a pattern in the audit trail deserves a human: an `alert.raised` event in the trail (same
transaction as the event that tripped it) and, if configured, a PHI-free JSON POST to a webhook, sent off the request
path. The payload carries pseudonyms, codes and counts only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import urllib.request

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from audit.models import DENIALS, AuditEvent

log = logging.getLogger("healthvault.alert")
WINDOW = dt.timedelta(minutes=1)


def send_webhook(url: str | None, payload: dict) -> None:
    """POST in a daemon thread; failures are logged (by type only), never raised into the request."""
    log.warning("alert: %s", payload.get("kind"))
    if not url:
        return

    def post() -> None:
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",  # noqa: S310
                                         headers={"content-type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 - operator-configured URL
        except Exception as exc:  # noqa: BLE001
            log.error("alert webhook failed: %s", type(exc).__name__)

    threading.Thread(target=post, name="alert-webhook", daemon=True).start()


def denial_burst(session: Session, *, actor: str, now: dt.datetime, threshold: int) -> int | None:
    """The count when this denial is exactly the threshold-th within the window (one alert per burst), else None."""
    # The outcome literally as the partial index ix_audit_events_actor_denials states it (a bound parameter would
    # keep PostgreSQL's generic plans and SQLite's planner from using that index).
    count = session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.actor == actor, text(DENIALS), AuditEvent.occurred_at > now - WINDOW))
    return count if count == threshold else None
