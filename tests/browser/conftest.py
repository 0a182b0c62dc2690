"""The browser-test harness of the web console: one headless Debian chromium (selenium +
chromium-driver) and one real ``moray server`` for the whole session, with real data:
simulated mTLS agents (tests/helpers/simagents.py) enrolled with real tokens, holding
the policies the server pushes, reporting a status and sending events over gRPC
(test_console_agent.py adds a real BPF agent, enrolled in the same server).

Every page visit and every failure leaves a screenshot in ``$MORAY_ARTIFACTS`` (default
tests/.artifacts/, gitignored). ``Console.log()`` returns the browser's console; every
test ends by checking it holds no Content-Security-Policy violation and no script error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.controlplane import ROOT, Api, ServerProcess, policy_yaml, wait_for
from tests.helpers.simagents import SimAgent, SimFleet

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install '.[test]')")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

ARTIFACTS = Path(os.environ.get("MORAY_ARTIFACTS") or ROOT / "tests" / ".artifacts") / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PASSWORD = "correct horse battery staple"
XSS_CONTAINER = '<script>window.__moray_xss=1</script><img src=x onerror="window.__moray_xss=2">'


@dataclass
class ConsoleEnv:
    server: ServerProcess
    admin: Api                       # bearer admin token (set-up and server-side checks)
    fleet: SimFleet
    agents: list[SimAgent]
    passwords: dict[str, str] = field(default_factory=dict)   # user name -> password
    seqs: dict[str, int] = field(default_factory=dict)         # what -> event seq


def _status(i: int) -> Any:
    from moray.api.proto import moray_pb2

    return moray_pb2.AgentStatus(
        kernel="6.1.0-test", agent_version=f"0.1.{i}",
        features={"bpf_lsm": True, "ringbuf": True},
        tiers={"exec": "lsm", "file": "lsm", "network": "cgroup_skb", "syscall": "seccomp"},
        drops={"ringbuf_cpu0": 0}, spool_bytes=0, spool_records=0)


def _events(now_ms: int) -> list[tuple[str, str, bytes]]:
    web = {"name": "web-1", "id": "c0ffee" * 4, "image": "nginx:1.27", "runtime": "docker"}
    # the agent's shapes (docs/events.md, docs/detections.md): an alert carries the
    # triggering event, with its container, under "event"
    out: list[dict[str, Any]] = []
    for i in range(6):          # a process chain: each exec the parent of the next
        out.append({"type": "exec", "node": "node-a", "container": web,
                    "process": {"pid": 100 + i, "exec_id": f"x{i}",
                                "args": ["/bin/ls", f"/tmp/{i}"]},
                    "parent": {"exec_id": f"x{i - 1}"} if i else {}})
    for rule, n in (("Shell in container", 3), ("Read sensitive file", 2)):
        for i in range(n):
            out.append({"type": "alert", "node": "node-a", "rule": rule, "priority": "WARNING",
                        "output": f"{rule} #{i}",
                        "event": {"type": "exec", "container": web,
                                  "process": {"pid": 105, "exec_id": "x5",
                                              "args": ["/bin/ls", "/tmp/5"]},
                                  "parent": {"exec_id": "x4"}}})
    out.append({"type": "alert", "node": "node-b", "rule": "Shell in container",
                "priority": "CRITICAL", "output": "shell in a hostile container",
                "event": {"type": "exec", "process": {"pid": 666, "args": [XSS_CONTAINER]},
                          "container": {"name": XSS_CONTAINER, "id": "bad",
                                        "image": XSS_CONTAINER}}})
    return [(f"ui-{i}", e["type"], json.dumps({**e, "time_ms": now_ms}).encode())
            for i, e in enumerate(out)]


@pytest.fixture(scope="session")
def console_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleEnv]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install "
                    "chromium chromium-driver)")
    work = tmp_path_factory.mktemp("console")
    server = ServerProcess(work / "server").start()
    fleet = SimFleet()
    try:
        admin = server.api()
        env = ConsoleEnv(server, admin, fleet, [])
        env.passwords["admin"] = (server.data_dir / "admin.password").read_text().strip()
        for name, role in (("oper", "operator"), ("view", "viewer")):
            admin("POST", "/api/v1/users", expect=201, json={
                "name": name, "password": PASSWORD, "role": role, "tenant": None})
            env.passwords[name] = PASSWORD
        admin.apply(policy_yaml("web", labels={"env": "prod"}), source="web.yaml")
        env.agents = fleet.enroll_many(server, work / "agents", 2, labels={"env": "prod"})
        for agent in env.agents:
            wait_for(lambda a=agent: a.versions().get("web") == 1, timeout=30,
                     what="the sim agents to hold policy web v1")
        for i, agent in enumerate(env.agents):
            fleet.call(_heartbeat(agent, _status(i)))
        stored = fleet.call(env.agents[0].send_events(_events(int(time.time() * 1000))))
        assert stored == 12
        events = admin("GET", "/api/v1/events", params={"limit": 1000})
        events = events["events"] if isinstance(events, dict) else events
        env.seqs["xss"] = next(e["seq"] for e in events   # payload spread or under "event"
                               if "node-b" in (e.get("node"), (e.get("event") or {}).get("node")))
        yield env
    finally:
        fleet.close()
        server.stop()


async def _heartbeat(agent: SimAgent, status: Any) -> None:
    from moray.api.proto import moray_pb2, moray_pb2_grpc

    assert agent.channel is not None
    await moray_pb2_grpc.AgentServiceStub(agent.channel).Heartbeat(
        moray_pb2.HeartbeatRequest(status=status), timeout=10)


class Console:
    """The browser on the console of ``base``: sign in, visit a page (screenshot saved),
    wait for elements and text, read the browser's console log."""

    def __init__(self, driver: Any, base: str, artifacts: Path) -> None:
        self.driver, self.base, self.artifacts = driver, base, artifacts
        self.shots = 0
        self.logs: list[dict[str, Any]] = []

    def screenshot(self, name: str) -> Path:
        self.shots += 1
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{self.shots:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.driver.save_screenshot(str(path))
        return path

    def open(self, hash_: str = "") -> None:
        self.driver.get(f"{self.base}/{hash_}")

    def login(self, user: str, password: str) -> None:
        self.open()
        self.wait_css("#login-username").send_keys(user)
        self.wait_css("#login-password").send_keys(password)
        self.css("#login-submit").click()
        self.wait_css("#session-user")
        self.screenshot(f"signed-in-{user}")

    def visit(self, page: str, ready: str) -> WebElement:
        """Go to ``#/page`` and wait for the CSS selector ``ready`` (the page's data)."""
        self.driver.execute_script("location.hash = arguments[0]", f"#/{page}")
        found = self.wait_css(ready)
        self.screenshot(page.split("?", maxsplit=1)[0])
        return found

    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def wait_css(self, selector: str, timeout: float = 15) -> WebElement:
        def found() -> WebElement | None:
            try:
                return self.css(selector)
            except WebDriverException:
                return None
        return wait_for(found, timeout=timeout, interval=0.05, what=f"element {selector}")

    def wait_text(self, selector: str, text: str, timeout: float = 15) -> WebElement:
        def found() -> WebElement | None:
            for node in self.all(selector):
                try:
                    if text in node.text:
                        return node
                except WebDriverException:
                    continue
            return None
        return wait_for(found, timeout=timeout, interval=0.05,
                        what=f"{text!r} in {selector}")

    def until(self, predicate: Callable[[], Any], what: str, timeout: float = 15) -> Any:
        return wait_for(predicate, timeout=timeout, interval=0.05, what=what)

    def log(self) -> list[dict[str, Any]]:
        self.logs += self.driver.get_log("browser")
        return self.logs

    def problems(self) -> list[str]:
        """CSP violations and script errors in the browser's console (network answers
        the tests provoke, 401/403/404/422, are not problems)."""
        out = []
        for entry in self.log():
            message = str(entry.get("message", ""))
            csp = "Content Security Policy" in message or "Refused to" in message
            if csp or (entry.get("source") == "javascript" and entry.get("level") == "SEVERE"):
                out.append(message)
        return out


@pytest.fixture(scope="session")
def browser(console_env: ConsoleEnv) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run",
                "--password-store=basic"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(browser: Any, console_env: ConsoleEnv, request: pytest.FixtureRequest
            ) -> Iterator[Console]:
    """A signed-out browser on the console, for one test; its screenshots go to
    ``$MORAY_ARTIFACTS/browser/<test>/``; at the end, no CSP violation or script error."""
    browser.delete_all_cookies()
    browser.get("about:blank")
    browser.get_log("browser")        # what earlier tests left
    artifacts = ARTIFACTS / request.node.name
    shutil.rmtree(artifacts, ignore_errors=True)      # only this run's screenshots
    c = Console(browser, console_env.server.url, artifacts)
    yield c
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        c.screenshot("failure")
        (c.artifacts / "browser.log").write_text(json.dumps(c.log(), indent=1))
    assert c.problems() == []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
