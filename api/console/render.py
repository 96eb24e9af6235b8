"""Jinja2 rendering for the console: one environment, autoescaping on for every template.

Owns turning a template and values into HTML. Values are escaped (a `<script>` in a title, file name or purpose
renders as text); templates hold no inline script or style (the CSP forbids both). Never does I/O beyond reading its
own template files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2

from api.console import i18n

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                          auto_reload=False)


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, str) and len(value) >= 16 and value[4] == "-":
        return value[:16].replace("T", " ")
    return "" if value is None else str(value)


def _short(value: Any) -> str:
    """MM-DD HH:MM (UTC): for narrow tables."""
    full = _when(value)
    return full[5:16] if len(full) >= 16 else full


_ENV.filters["when"] = _when
_ENV.filters["short"] = _short


def render(template: str, *, lang: str, **values: Any) -> str:
    return _ENV.get_template(template).render(lang=lang, t=lambda key: i18n.text(lang, key), **values)
