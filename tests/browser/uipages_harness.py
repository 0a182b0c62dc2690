"""A headless Debian chromium driven by selenium (Debian's chromium-driver), for the tests
of the console pages images, registries, audit, users, tokens and tenants.

Until the console shell's own browser harness is on this branch, these helpers are the
smallest that serve: ``browser()`` starts chromium, ``signed_in(driver, url, user,
password)`` signs in through the sign-in form, ``shot(driver, name)`` saves a screenshot
under ``$MORAY_ARTIFACTS/browser`` (default ``<repo>/artifacts/browser``), ``wait_css``
waits for an element. No sleeps: every wait polls for what it checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("MORAY_ARTIFACTS", ROOT / "artifacts")) / "browser"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

__all__ = ["By", "WebDriver", "WebElement", "browser", "csp_violations", "go", "shot",
           "signed_in", "wait", "wait_css"]

NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                    reason="Debian's chromium and chromium-driver missing")


@contextmanager
def browser() -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, check: Callable[[WebDriver], Any], what: str,
         timeout: float = 30) -> Any:
    def guarded(d: WebDriver) -> Any:
        try:
            return check(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(guarded)
    except TimeoutException as err:
        shot(driver, "timeout-" + "".join(c if c.isalnum() else "-" for c in what)[:60])
        raise AssertionError(f"timed out waiting for {what}; page: "
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:2000]}") from err


def wait_css(driver: WebDriver, css: str, timeout: float = 30) -> WebElement:
    return wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, css), css, timeout)


def shot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def signed_in(driver: WebDriver, url: str, user: str, password: str) -> None:
    driver.get(url + "/")
    wait_css(driver, "#login-username").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    wait_css(driver, "#session-user")


def go(driver: WebDriver, url: str, hash_: str, ready_css: str) -> WebElement:
    """Show a console page (#/<page>?..) and wait for an element of it."""
    driver.get(f"{url}/#/{hash_}")
    return wait_css(driver, ready_css)


def csp_violations(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e.get("message", "")]
