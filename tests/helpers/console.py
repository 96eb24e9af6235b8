"""The console's forms in process: the CSRF token a page embeds, signing in through the form, the headers every
console page carries (tests/api/test_console*.py)."""

from __future__ import annotations

import re

from tests.helpers import PASSWORD

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html[:500]
    return match.group(1)


def console_login(client, username: str, password: str = PASSWORD, otp: str | None = None) -> str:
    """Sign in through the console form; returns the CSRF token of the signed-in session."""
    client.cookies.clear()
    page = client.get("/login")
    assert page.status_code == 200
    form = {"csrf": csrf_of(page.text), "username": username, "password": password, "next": "/"}
    if otp:
        form["otp"] = otp
    response = client.post("/login", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/login").text)


def assert_console_headers(response) -> None:
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["cache-control"] == "no-store"
