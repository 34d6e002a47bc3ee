"""Issue #14, done-when: in headless Chromium (selenium, Debian's chromium + chromedriver) an
admin logs in to the console over HTTPS, watches a study go through (real vendor peer with
encrypted inference, real PACS), sees the vendor's outage as a degraded node with a readable
reason, sees the job fail with what failed and what to do, brings the vendor back and retries
the job from the browser until its SR is in the PACS.

Set ``BLINDREAD_SCREENSHOTS=<dir>`` to keep the screenshots (docs/console/*.png were made so).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.api.auth import hash_password
from node.demo.phantom_study import phantom_cr_study
from node.demo.stack import Stack
from tests.support.peers import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.peer]

PASSWORD = "console test password"


def _until(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for: {what}")


def test_admin_watches_outage_fixes_it_and_retries_from_the_browser(tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    shots = Path(os.environ.get("BLINDREAD_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,760", "--ignore-certificate-errors"):  # fmt: skip
        opts.add_argument(arg)  # the node's HTTPS certificate is from the demo's private CA
    users = {"admin": hash_password(PASSWORD)}
    extra = {"health": {"probe_seconds": 0.5}}
    with Stack(tmp_path / "stack", quiet_seconds=1.0, pacs="embedded", console_users=users,
               extra=extra) as stack:  # fmt: skip
        assert stack.node is not None and stack.node.metrics_server is not None
        base = stack.node.metrics_server.url
        assert base.startswith("https://")
        driver = webdriver.Chrome(options=opts, service=Service(chromedriver))
        try:
            text = lambda css: driver.find_element(By.CSS_SELECTOR, css).text  # noqa: E731

            def page(path: str) -> None:
                driver.get(base + path)

            # log in (the console redirects there)
            page("/console/")
            assert driver.current_url.endswith("/console/login")
            driver.find_element(By.ID, "user").send_keys("admin")
            driver.find_element(By.ID, "password").send_keys(PASSWORD)
            driver.find_element(By.ID, "login").click()
            _until("dashboard", lambda: bool(driver.find_elements(By.ID, "status")), 20)
            cookie = driver.get_cookie("blindread_session")
            assert cookie is not None and cookie["httpOnly"] and cookie["secure"]

            # a study goes through
            first = phantom_cr_study([True, False], seed=11)
            uid1 = stack.send_study(first)

            def job_states() -> list[str]:
                page("/console/jobs")
                rows = driver.find_elements(By.CSS_SELECTOR, "#jobs tr.job")
                return [r.get_attribute("data-state") or "" for r in rows]

            _until("first job done", lambda: job_states() == ["done"], 180)
            stack.wait_for_sr(uid1, timeout=30)
            page("/console/")
            _until("healthy", lambda: (page("/console/"), text("#status"))[1] == "ok", 30)
            driver.save_screenshot(str(shots / "dashboard.png"))

            # the vendor goes down: degraded, with a reason an admin can act on
            stack.stop_vendor()
            _until("degraded", lambda: (page("/console/"), text("#status"))[1] == "degraded", 30)
            reasons = text("#reasons")
            assert "vendor demo-vendor at https://127.0.0.1:" in reasons
            assert "is unreachable" in reasons and "check that its server runs" in reasons
            assert "unreachable" in text("#peer-vendor-demo-vendor")
            driver.save_screenshot(str(shots / "degraded.png"))

            # a second study fails for it (the runner's tries only, one retry layer)
            uid2 = stack.send_study(phantom_cr_study([True], seed=12))
            _until("second job failed", lambda: sorted(job_states()) == ["done", "failed"], 120)
            page("/console/quarantine")
            link = driver.find_element(By.CSS_SELECTOR, "#jobs tr.job a")
            job_path = link.get_attribute("href")
            link.click()
            assert text("#job-state") == "failed"
            assert "VendorUnavailableError" in text("#job-error")
            assert "vendor could not be reached" in text("#job-advice")
            assert uid2 not in driver.page_source and uid1 not in driver.page_source  # no UIDs
            driver.save_screenshot(str(shots / "job-failed.png"))

            # the admin brings the vendor back and retries the job from the browser
            stack.start_vendor(stack.certs)
            _until("healthy again", lambda: (page("/console/"), text("#status"))[1] == "ok", 30)
            driver.get(str(job_path))
            driver.find_element(By.ID, "retry").click()
            assert "queued again" in text("#msg")
            _until("retried job done",
                   lambda: (driver.get(str(job_path)), text("#job-state"))[1] == "done", 180)
            steps = text("#steps")
            assert "received" in steps and "deliver" in steps
            driver.save_screenshot(str(shots / "job-done.png"))
            stack.wait_for_sr(uid2, timeout=30)
        finally:
            driver.quit()
    assert shutil.which(chromium)
