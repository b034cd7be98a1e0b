"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright) through a
canary under load: the weights move on the page by themselves (server-sent events, no reload),
the judge's canary-vs-baseline charts draw, a request without the token is refused, and the
Promote button advances the rollout to the end. Screenshots are kept in tests/artifacts/serve/
(ignored by git; KILN_TEST_ARTIFACTS moves them)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing.browser import chromium
from kiln.testing.load import Load
from kiln.testing.project import KILN, ROOT, Proj, wait_for
from kiln.testing.serve import ServeProc

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("KILN_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "serve"

CANARY = """\
      strategy: canary
      steps:
        - {weight: 20}
        - {weight: 50}
      analysis: {max_error_rate_increase: 0.05, max_latency_increase: 100%, min_requests: 20,
                 on_no_data: pause}
      drain_timeout: 2s
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    with chromium(tmp_path / "chromium-profile") as context:
        yield context


def shot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    print(f"screenshot: {path}")
    return path


def weight_on_page(page: object, release: str) -> str | None:
    loc = page.locator(f'[data-weight="{release}"]')  # type: ignore[attr-defined]
    return str(loc.first.inner_text()) if loc.count() else None


def test_dashboard_follows_and_steers_a_canary_under_load(proj: Proj, browser: object) -> None:
    proj.write(rollout=CANARY, replicas=2)
    assert proj.kiln("deploy").returncode == 0
    with ServeProc(proj.dir) as srv, Load(proj.listen, rate=80, max_seconds=240) as load:
        page = browser.new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(srv.login_url)  # sets the token cookie, then shows the board
        assert "Read-only" not in page.content()
        page.evaluate("window.__sameDocument = true")
        proj.behave(version="2")
        deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            # The canary appears and its weight moves to 20% on the open page, by itself.
            page.wait_for_function(
                "() => { const e = document.querySelector('[data-weight=\"web-r2\"]');"
                " return e && e.textContent.trim() === '20%'; }", timeout=90_000)
            assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
            assert weight_on_page(page, "web-r1") == "80%"
            # The judge's live charts: traffic split, error rate, latency, with canary data.
            page.wait_for_function(
                "() => { const h = window.KilnDashboard.holders.web; if (!h) return false;"
                " const d = h.chart.charts[1].data; return h.chart.charts.length === 3 &&"
                " d[1].some(v => v !== null) && d[2].some(v => v !== null); }", timeout=60_000)
            assert page.locator('[data-chart-for="web"] canvas').count() == 3
            shot(page, "1-canary-20")

            # Without the token nothing changes: the API and a form post are refused.
            anon = page.request.post(srv.base + "/api/services/web/promote", data="{}")
            assert anon.status == 401
            forged = page.request.post(srv.base + "/services/web/promote",
                                       form={"csrf": "forged"})
            assert forged.status == 403
            assert srv.status()["services"][0]["rollout"]["step"] == 0
            wait_for(lambda: len(srv.events("serve.refused")) == 2, timeout=10)

            # Promote: the canary goes to its next step, then to the end.
            page.locator('button[data-action="promote"]').first.click()
            page.wait_for_function(
                "() => { const e = document.querySelector('[data-weight=\"web-r2\"]');"
                " return e && e.textContent.trim() === '50%'; }", timeout=60_000)
            shot(page, "2-canary-50")
            clicked = time.monotonic()
            page.locator('button[data-action="promote"]').first.click()
            page.wait_for_function(
                "() => document.querySelector('.phase') &&"
                " document.querySelector('.phase').textContent.includes('promoted')",
                timeout=90_000)
            print(f"promoted {time.monotonic() - clicked:.1f}s after the second click")
            shot(page, "3-promoted")
            out, err = deploy.communicate(timeout=60)
            assert deploy.returncode == 0, out + err
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
        wait_for(lambda: len([e for e in srv.events("serve.request")
                              if "via the dashboard" in e["message"]]) == 2, timeout=10,
                 what="both promotes recorded as events")
        report = page.locator('a[href^="/reports/"]').first.get_attribute("href")
        page.goto(srv.base + str(report))
        page.wait_for_selector("canvas")
        assert page.locator("canvas").count() == 3 and "promoted" in page.content()
        shot(page, "4-report")
        assert not errors, errors
    wait_for(lambda: proj.weights() == {"web-r2": 100}, timeout=30)
    print(load.stats.summary())
    assert load.stats.conn_errors == 0, load.stats.summary()
