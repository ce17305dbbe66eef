"""The console in a real browser (Debian's chromium) against a real stack, one operator's session.

The stack: a real nats-server, the policy and alert services, a probe for the local Docker engine
and a real container it guards. Screenshots of every page land in artifacts/console/.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from preguard.alert.service import AlertService
from preguard.console import ConsoleServer
from preguard.policy.service import PolicyService
from tests.conftest import need
from tests.console.browser import chromium, chromium_path
from tests.console.conftest import TOKEN, XSS, Guarded

BAD = """name: web-lock
description: no shadow, no odd files
severity: high
selector:
  containers: ["{name}"]
rules:
  - {{kind: file, path: /etc/shadow, access: read}}
  - {{kind: file, path: "/tmp/**", access: read}}
  - kind: network
    cidr: 127.0.0.2/32
    ports: "70000"
"""
pytestmark = pytest.mark.docker
GOOD = BAD.replace('"70000"', '"1-1024"')


@pytest.fixture
def shots(artifacts_dir: Path) -> Callable[[Page, str], Awaitable[None]]:
    folder = artifacts_dir / "console"
    folder.mkdir(parents=True, exist_ok=True)

    async def shot(page: Page, name: str) -> None:
        await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    return shot


@pytest.fixture
async def page(console: ConsoleServer) -> AsyncIterator[Page]:
    if chromium_path() is None:
        need("chromium", "install Debian's chromium (apt-get install chromium); nothing is downloaded")
    async with chromium() as browser:
        context = await browser.new_context(base_url=console.url, viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(10_000)
        yield page
        await context.close()


async def wait_for_revision(page: Page, name: str, revision: int, deadline: float = 20.0) -> None:
    """Reload the overview until the container reports at least this applied revision (probe state)."""
    cell = page.locator(f'tr[data-container="{name}"] td.revision')
    end = time.monotonic() + deadline
    while True:
        await page.goto("/")
        if await cell.count() and int(await cell.get_attribute("data-revision") or 0) >= revision:
            return
        assert time.monotonic() < end, f"{name} never applied revision {revision}"
        await asyncio.sleep(0.2)  # polling Docker-side state, not waiting for a message


async def test_operator_session_in_a_real_browser(
    page: Page,
    console: ConsoleServer,
    policy_service: PolicyService,
    alert_service: AlertService,
    guarded: Guarded,
    shots: Callable[[Page, str], Awaitable[None]],
) -> None:
    probe = guarded
    dialogs: list[str] = []
    csp_errors: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    # sign in
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await shots(page, "login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator(f'tr[data-container="{probe.name}"]')).to_be_visible()

    # a policy with an error: the error shows at its field, in the line where `ports` is
    await page.goto("/policies/new")
    await page.fill("#text", BAD.format(name=probe.name))
    await page.click("#save")
    error = page.locator('li.has-error[data-line="11"] .field-error[data-field="$.rules[2].ports"]')
    await expect(error).to_contain_text("port 70000 is outside 1-65535")
    await shots(page, "policy-edit-error")

    # fixed: preview shows the container it selects, save stores it
    await page.fill("#text", GOOD.format(name=probe.name))
    await page.click("#preview")
    await expect(page.locator(f'#preview-result tr[data-container="{probe.name}"]')).to_be_visible()
    await shots(page, "policy-preview")
    await page.click("#save")
    await expect(page).to_have_url(re.compile(r"/policies/web-lock\?saved=\d+$"))
    revision = int(page.url.rsplit("=", 1)[1])
    await shots(page, "policy")
    await page.goto("/policies")
    await expect(page.locator('tr[data-policy="web-lock"] td.revision')).to_have_text(str(revision))
    await shots(page, "policies")

    # the container reports the revision applied
    await wait_for_revision(page, probe.name, revision)

    # a blocked call appears live, and its count rises in place
    await page.goto("/alerts")
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    await probe.blocked_read("/etc/shadow")
    row = page.locator("#alerts tbody tr", has_text="/etc/shadow")
    await expect(row.locator(".count")).to_have_text("1")
    await probe.blocked_read("/etc/shadow")
    await expect(row.locator(".count")).to_have_text("2")
    await expect(row).to_have_count(1)

    # attacker-controlled text shows as text, live and server-rendered
    await probe.blocked_read(f"/tmp/{XSS}")
    xss_cell = page.locator("#alerts td.target", has_text=XSS)
    await expect(xss_cell).to_have_text(f"/tmp/{XSS}")
    await shots(page, "alerts")
    # a filter from a row: only this container's alerts, still live
    await row.locator("td.container a").click()
    await expect(page).to_have_url(re.compile(r"/alerts\?container=[0-9a-f]{12}$"))
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    await expect(row.locator(".count")).to_have_text("2")
    await page.reload()
    await expect(xss_cell).to_have_text(f"/tmp/{XSS}")
    assert await page.locator("#alerts img").count() == 0
    await xss_cell.locator("a").click()
    await expect(page.locator("#sample .exe")).to_have_text(
        "/usr/bin/cat"
    )  # resolved: /bin is a link to usr/bin
    await expect(page.locator("#alert-facts .target")).to_have_text(f"/tmp/{XSS}")
    await shots(page, "alert")

    await page.goto("/")
    # two file alerts and the probe's coverage alert, all high: the chart counts them
    await expect(page.locator('[data-total="high"]')).to_have_text(re.compile(r"^([2-9]|[1-9][0-9]+)$"))
    await expect(page.locator('#severity-chart rect[data-severity="high"]')).not_to_have_count(0)
    await shots(page, "overview")

    # history with a diff between revisions
    await page.goto("/policies/web-lock/edit")
    await page.fill("#text", GOOD.format(name=probe.name).replace("severity: high", "severity: critical"))
    await page.click("#save")
    await page.goto("/policies/web-lock/history")
    await expect(page.locator("#diff .add", has_text="+severity: critical")).to_be_visible()
    await shots(page, "history")

    # a change without the CSRF token is refused; the policy is still there
    status = await page.evaluate(
        """() => fetch('/policies/web-lock/delete', {method: 'POST',
             body: new URLSearchParams({confirm: 'web-lock'})}).then(r => r.status)"""
    )
    assert status == 403
    await page.goto("/policies/web-lock/delete")
    await shots(page, "policy-delete")
    await page.click("#confirm-delete")
    await expect(page).to_have_url(re.compile(r"/policies$"))
    await expect(page.locator('tr[data-policy="web-lock"]')).to_have_count(0)

    assert dialogs == []  # no injected script ever ran
    assert csp_errors == []  # our own pages never trip the Content-Security-Policy
