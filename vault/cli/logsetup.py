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


def configure(settings: Settings) -> logging.handlers.QueueListener:
    """Route every record through a queue to stderr and the rotating file, so the event loop never waits on I/O."""
    import queue
    import sys

    settings.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    file_handler = logging.handlers.TimedRotatingFileHandler(
        settings.log_dir / "healthvault.log", when="midnight", utc=True, backupCount=settings.log_retention_days,
        encoding="utf-8",
    )
    console = logging.StreamHandler(sys.stderr)
    for handler in (file_handler, console):
        handler.setFormatter(logging.Formatter(FORMAT))
    records: queue.SimpleQueue = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, file_handler, console, respect_handler_level=True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(logging.INFO)
    listener.start()
    return listener
