"""Driving the console in a real browser (tests/system/test_console_browser.py): the CLI and a free port for the
server under test, what the journeys record (`Run`: every URL, every response, console errors, screenshots), a
browser context per user with axe-core loaded, the accessibility, width and keyboard checks, and a staff member's
first sign-in (password change, TOTP enrolment from the page's QR secret)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import PASSWORD

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
INITIAL = "Initial-Passw0rd!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


# Chromium's built-in PDF viewer (a component extension) shows a PDF in a frame through requests that stay inside the
# browser (its own files and chrome:// resources). Every other URL must be the vault's own.
BROWSER_INTERNAL = ("chrome-extension://mhjfbmdgcfjbbpaeojofohoefgiehjai/", "chrome://resources/")


class Run:
    """What the journeys saw: every URL, every console response's headers, CSP reports, screenshots."""

    def __init__(self, base: str, artifacts: Path) -> None:
        self.base = base
        self.artifacts = artifacts
        self.urls: list[str] = []
        self.responses: list = []
        self.console_errors: list[str] = []
        self.shots = 0
        self.progress: list[int] = []  # the upload bar's values, as console.js set them

    def watch(self, page) -> None:
        page.on("request", lambda request: None if request.url.startswith(BROWSER_INTERNAL)
                else self.urls.append(request.url))
        # The vault's own responses (Chromium's PDF viewer answers a frame's PDF from an extension URL whose headers
        # never resolve once the viewer has moved on).
        page.on("response", lambda response: self.responses.append(response)
                if response.url.startswith(self.base) else None)
        page.on("console", lambda message: self.console_errors.append(f"{page.url} {message.location}: {message.text}")
                if message.type == "error" else None)
        page.on("dialog", lambda dialog: (_ for _ in ()).throw(AssertionError(f"a dialog opened: {dialog.message}")))

    def shot(self, page, name: str) -> None:
        self.shots += 1
        page.screenshot(path=str(self.artifacts / f"{self.shots:02d}-{name}.png"), full_page=True)


def new_context(browser, run: Run, *, mobile: bool):
    viewport = {"width": 375, "height": 812} if mobile else {"width": 1280, "height": 900}
    context = browser.new_context(viewport=viewport, locale="zh-CN", accept_downloads=True)
    context.add_init_script(path=str(AXE))  # through the DevTools protocol: the page's CSP stays as served
    context.expose_function("hvProgress", lambda value: run.progress.append(int(value)))
    context.add_init_script(script="document.addEventListener('htmx:xhr:progress', () => setTimeout(() => { "
                            "const bar = document.getElementById('upload-progress'); "
                            "if (bar) window.hvProgress(bar.value); }, 0));")
    context.set_default_timeout(30_000)
    page = context.new_page()
    run.watch(page)
    return context, page


def axe(page) -> list[dict]:
    """Serious and critical violations axe-core finds on the page once it has loaded."""
    page.wait_for_load_state("load")
    page.wait_for_function("document.documentElement !== null && window.axe !== undefined")
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                           ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
                           ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)}))")
    return result


def fits(page) -> bool:
    """Nothing wider than the screen (wide tables scroll inside their own box): usable at 375 px."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def tab_order(page, count: int) -> list[str]:
    """The ids (or tag names) the keyboard focus visits, pressing Tab `count` times from the top of the page."""
    page.locator("body").focus()
    seen = []
    for _ in range(count):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.id || document.activeElement.tagName.toLowerCase()"))
    return seen


def first_sign_in(page, run: Run, username: str, name: str) -> str:
    """Initial password → new password → TOTP enrolment (secret from the page) → activation → sign-in."""
    import pyotp

    page.goto(run.base + "/login")
    page.get_by_label("用户名", exact=True).fill(username)
    page.get_by_label("密码", exact=True).fill(INITIAL)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url("**/first-sign-in")
    page.locator("#username").fill(username)
    page.locator("#password").fill(INITIAL)
    page.locator("#new_password").fill(PASSWORD)
    run.shot(page, f"{name}-first-sign-in")
    page.get_by_role("button", name="修改密码").click()
    page.get_by_text("密码已修改").wait_for()
    page.locator("#t-password").fill(PASSWORD)
    page.get_by_role("button", name="生成二维码").click()
    qr = page.locator(".qr svg")
    qr.wait_for()
    run.shot(page, f"{name}-totp-qr")
    secret = page.locator("#totp-secret").inner_text().strip()
    totp = pyotp.TOTP(secret)
    page.locator("#a-password").fill(PASSWORD)
    page.locator("#a-otp").fill(totp.now())
    page.get_by_role("button", name="启用两步验证").click()
    page.wait_for_url("**/login?done=first")
    page.get_by_label("用户名", exact=True).fill(username)
    page.get_by_label("密码", exact=True).fill(PASSWORD)
    page.locator("#otp").fill(totp.at(time.time() + 30))  # the next step: the activation code cannot be replayed
    page.get_by_role("button", name="登录").click()
    return secret
