"""Service and access logging for the server process (LOG-1).

Owns where logs go: stderr and a daily-rotated file under the data directory kept `log_retention_days` (never fewer
than 184, enforced by Settings). Log lines carry route templates, status codes, timings and request ids; callers
must never log PHI, tokens, passwords or bound SQL values (engines hide parameters).
"""

from __future__ import annotations

import logging
import logging.handlers

from vault.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(settings: Settings) -> logging.Handler:
    settings.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.handlers.TimedRotatingFileHandler(
        settings.log_dir / "healthvault.log", when="midnight", utc=True, backupCount=settings.log_retention_days,
        encoding="utf-8",
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler
