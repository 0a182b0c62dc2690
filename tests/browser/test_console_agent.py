"""The console with a real BPF agent (root): `moray agent run --server ...` enrols in the
browser harness's server with a one-time token (conftest.py), and the console shows what
it really reported: online with its version, labels, health and the enforcement tier per
rule kind of its kernel; a process the test runs, whose argv is markup, as text (no
script runs) with its real process ancestry; a policy written in the console's editor,
acknowledged by the agent (the acknowledgement in the page) and then enforced by its BPF
programs, the enforcement event in the page. Screenshots: $MORAY_ARTIFACTS/browser/<test>/.

Loads BPF programs: run under the shared lock (`flock /tmp/moray-integration.lock ...`).
The agent's label (ui=bpf) is selected by no other policy of the harness (theirs select
env=prod: /bin/sh denied), so it enforces only what this module writes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from moray import __version__
from tests.browser.conftest import PASSWORD, Console, ConsoleEnv
from tests.helpers.agent import AgentProcess, free_port
from tests.helpers.containers import BUSYBOX
from tests.helpers.controlplane import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF programs)")]

LABEL = ("ui", "bpf")
SCRIPT_ARG = "<script>alert(1)</script>"
IMG_ARG = "<img src=x onerror=alert(2)>"
POLICY = "ui-bpf-deny"


@dataclass
class RealAgent:
    env: ConsoleEnv
    proc: AgentProcess
    agent_id: str
    binary: Path           # a private copy of busybox: the policy denies only it
    watched: Path          # a directory whose opens the agent reports (--watch)

    def record(self) -> dict[str, Any]:
        found = self.env.admin("GET", f"/api/v1/agents/{self.agent_id}")
        assert isinstance(found, dict)
        return found

    def events(self, **query: Any) -> list[dict[str, Any]]:
        page = self.env.admin("GET", "/api/v1/events", params={
            "agent": self.agent_id, "page": 1, "limit": 1000, **query})
        return list(page["events"])


@pytest.fixture(scope="module")
def real_agent(console_env: ConsoleEnv, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[RealAgent]:
    work = tmp_path_factory.mktemp("bpf-agent")
    server, admin = console_env.server, console_env.admin
    ca = work / "ca.pem"
    ca.write_bytes(server.ca_pem)
    binary = work / "bin" / "busybox"      # busybox runs applets only under its own name
    binary.parent.mkdir()
    shutil.copy2(BUSYBOX, binary)
    watched = work / "watched"
    watched.mkdir()
    known = {a["id"] for a in admin("GET", "/api/v1/agents")}
    args = ["--no-default-rules", "--no-containers", "--watch", f"{watched}/",
            "--server", server.grpc_target,
            "--enroll-server", server.enroll_target, "--ca", str(ca),
            "--data-dir", str(work / "agent-data"), "--label", "=".join(LABEL)]
    token = admin.token(dict([LABEL]))
    with AgentProcess(args, workdir=work, env={"MORAY_ENROLL_TOKEN": token}) as proc:
        def enrolled() -> dict[str, Any] | None:
            return next((a for a in admin("GET", "/api/v1/agents")
                         if a["id"] not in known and a["connected"]
                         and (a.get("status") or {}).get("tiers")), None)
        agent = wait_for(enrolled, timeout=30, what="the BPF agent connected with its status")
        yield RealAgent(console_env, proc, agent["id"], binary, watched)
        admin.status("DELETE", f"/api/v1/policies/{POLICY}")   # nothing left for later tests


def _health(agent: dict[str, Any]) -> str:
    """What agents.js shows as health for this record (the same three sources)."""
    status = agent.get("status") or {}
    lost = sum(int(v) for v in (status.get("drops") or {}).values())
    failed = [p for p in (agent.get("policies") or {}).values() if p.get("error")]
    if failed:
        return "policy failed"
    if lost:
        return f"{lost} dropped"
    return "spooled" if int(status.get("spool_records") or 0) else "ok"


def test_the_real_agent_is_online_with_its_version_labels_health_and_tiers(
        console: Console, real_agent: RealAgent) -> None:
    record = real_agent.record()
    tiers = record["status"]["tiers"]
    assert {"exec", "file", "network", "syscall"} <= set(tiers)     # the kernel's, reported
    console.login("view", PASSWORD)
    row_css = f'#agents-list tr[data-agent="{real_agent.agent_id}"]'
    console.visit("agents", row_css)
    row = console.css(row_css)
    cells = {th.text: td for th, td in zip(
        console.all("#agents-list thead th"), row.find_elements(By.TAG_NAME, "td"),
        strict=True)}
    assert cells["state"].text == "online"
    assert cells["version"].text == __version__
    assert cells["labels"].text == "=".join(LABEL)
    assert {b.text for b in cells["tiers"].find_elements(By.CSS_SELECTOR, ".badge")} == {
        f"{kind}: {tier}" for kind, tier in tiers.items()}
    # health as the page derives it from the record (drops can grow between two reads
    # on a busy machine: then only the kind of badge is checked)
    before, after = _health(record), _health(real_agent.record())
    if before == after:
        assert before in cells["health"].text
    else:
        assert any(k in cells["health"].text for k in ("ok", "dropped", "spooled", "failed"))
    assert cells["last seen"].text.endswith("s ago")          # heartbeats every few s
    row.click()
    detail = console.wait_css("#agent-detail")
    console.wait_text("#agent-detail", os.uname().release)      # the kernel it runs on
    shown = {tuple(td.text for td in tr.find_elements(By.TAG_NAME, "td"))
             for tr in detail.find_elements(By.CSS_SELECTOR, "table:not(.kv) tbody tr")}
    assert {(kind, tier) for kind, tier in tiers.items()} <= shown
    console.screenshot("real-agent")


def test_a_real_exec_with_markup_in_its_argv_is_text_with_its_ancestry(
        console: Console, real_agent: RealAgent, tmp_path: Path) -> None:
    # python -> sh (outer) -> sh (inner) -> echo: each a real exec the agent reports
    # (the trailing `:` keeps each shell from exec'ing its last command in place)
    marker = tmp_path.name
    subprocess.run(["/bin/sh", "-c", 'sh -c \'/bin/echo "$@" >/dev/null; :\' inner "$@"; :',
                    "outer", marker, SCRIPT_ARG, IMG_ARG], check=True, timeout=30)

    def echoed() -> dict[str, Any] | None:
        return next((e for e in real_agent.events(type="exec")
                     if e.get("process", {}).get("args") == ["/bin/echo", marker, SCRIPT_ARG,
                                                              IMG_ARG]), None)
    event = wait_for(echoed, timeout=30, what="the agent's exec of /bin/echo on the server")
    seq = event["seq"]
    detail = real_agent.env.admin("GET", f"/api/v1/events/{seq}")
    chain = [" ".join(step["args"]) for step in detail["ancestry"]]
    assert len(chain) >= 3 and chain[0].startswith("/bin/echo")
    assert chain[1].startswith("sh -c") and chain[2].startswith("/bin/sh -c")
    console.login("view", PASSWORD)
    # a viewer's filters: this agent's execs up to this one, newest first, its detail open
    console.driver.execute_script("window.alert = () => { window.__moray_alert = 1; }")
    console.visit(f"events?agent={real_agent.agent_id}&type=exec&before={seq + 1}&seq={seq}",
                  f'#events-list tr[data-seq="{seq}"]')
    row = console.css(f'#events-list tr[data-seq="{seq}"]')
    assert f"/bin/echo {marker} {SCRIPT_ARG} {IMG_ARG}" in row.text
    ancestry = console.wait_css("#event-ancestry")
    steps = [li.text for li in ancestry.find_elements(By.TAG_NAME, "li")]
    assert [s.split(" pid ")[0] for s in steps] == chain
    console.wait_text("#event-detail", SCRIPT_ARG)
    console.driver.execute_script("arguments[0].scrollIntoView()", console.css("#event-detail"))
    console.screenshot("hostile-argv")
    # nothing ran: no dialog, no alert() call, no element made from the argv
    try:
        text = console.driver.switch_to.alert.text
        raise AssertionError(f"a dialog opened: {text!r}")
    except NoAlertPresentException:
        pass
    assert console.driver.execute_script("return window.__moray_alert === undefined")
    assert not console.all("#page img") and not console.all("#page script")
    # the node and time filters: this agent's host, the millisecond of the exec; the
    # page lists what the API lists for the same filters
    window = {"node": event["node"], "type": "exec", "since_ms": event["time_ms"],
              "until_ms": event["time_ms"] + 1}
    console.visit("events?" + "&".join(f"{k}={v}" for k, v in window.items()),
                  f'#events-list tr[data-seq="{seq}"]')
    shown = {int(r.get_attribute("data-seq"))
             for r in console.all("#events-list tbody tr[data-seq]")}
    listed = {e["seq"] for e in real_agent.env.admin("GET", "/api/v1/events", params={
        "page": 1, "limit": 50, **window})["events"]}
    assert seq in shown and shown <= listed
    console.screenshot("node-and-time-filter")


def test_real_open_and_connect_events_show_their_path_and_destination(
        console: Console, real_agent: RealAgent) -> None:
    """The events list names what a real event is about: an open's path (a file name
    with markup, as text) and a connect's destination."""
    hostile = real_agent.watched / f"{IMG_ARG}.conf"
    hostile.write_text("x")
    port = free_port()
    with socket.socket() as s:          # refused: nothing listens there
        s.settimeout(5)
        assert s.connect_ex(("127.0.0.1", port)) != 0
    pid = os.getpid()

    def opened() -> dict[str, Any] | None:
        return next((e for e in real_agent.events(type="open")
                     if (e.get("file") or {}).get("path") == str(hostile)), None)

    def connected() -> dict[str, Any] | None:
        return next((e for e in real_agent.events(type="connect")
                     if (e.get("network") or {}).get("dport") == port
                     and (e.get("process") or {}).get("pid") == pid), None)
    found = {"open": wait_for(opened, timeout=30, what="the open on the server"),
             "connect": wait_for(connected, timeout=30, what="the connect on the server")}
    console.login("view", PASSWORD)
    console.driver.execute_script("window.alert = () => { window.__moray_alert = 1; }")
    for kind, text in (("open", str(hostile)), ("connect", f"→ 127.0.0.1:{port}")):
        seq = found[kind]["seq"]
        console.visit(f"events?agent={real_agent.agent_id}&type={kind}&before={seq + 1}",
                      f'#events-list tr[data-seq="{seq}"]')
        what = console.css(f'#events-list tr[data-seq="{seq}"] td:last-child').text
        assert text in what, what
        console.screenshot(f"{kind}-event")
    assert console.driver.execute_script("return window.__moray_alert === undefined")
    assert not console.all("#page img") and not console.all("#page script")


POLICY_YAML = """apiVersion: moray/v1
kind: RuntimePolicy
metadata:
  name: {name}
spec:
  scope:
    agents:
      labels:
        {key}: {value}
    host: true
  mode: enforce
  exec:
    deny:
      - {binary}
"""


def _run(binary: Path) -> str:
    """Run the binary: 'ran', or how it was stopped (LSM: EPERM at exec; else SIGKILL)."""
    try:
        rc = subprocess.run([str(binary), "true"], check=False, timeout=30).returncode
    except PermissionError:
        return "blocked"
    return "killed" if rc == -9 else "ran" if rc == 0 else f"rc {rc}"


def _set_editor(console: Console, text: str) -> None:
    console.driver.execute_script(
        "const a = document.getElementById('policy-editor'); a.value = arguments[0];"
        "a.dispatchEvent(new Event('input'));", text)


def test_a_policy_from_the_editor_is_acked_then_enforced_and_shown(
        console: Console, real_agent: RealAgent) -> None:
    binary = real_agent.binary
    assert _run(binary) == "ran"
    console.login("oper", PASSWORD)
    console.visit("policies?new=1", "#policy-editor")
    _set_editor(console, POLICY_YAML.format(name=POLICY, key=LABEL[0], value=LABEL[1],
                                            binary=binary))
    console.css("#policy-comment").send_keys("deny the test's busybox copy")
    console.css("#policy-save").click()
    console.wait_text("#policy-saved", "v1")
    # the agent's acknowledgement, in the page (refreshed every 3 s)
    ack = (f'#policy-acks tr[data-agent="{real_agent.agent_id}"][data-version="1"]')
    console.wait_text(ack, "APPLIED", timeout=30)
    console.driver.execute_script("arguments[0].scrollIntoView()", console.css(ack))
    # the simulated agents (env=prod) are outside the policy's selector: "not selected"
    for sim in real_agent.env.agents:
        row = console.css(f'#policy-acks tr[data-agent="{sim.agent_id}"]')
        assert row.get_attribute("data-selected") == "0" and "not selected" in row.text
    assert console.css(ack).get_attribute("data-selected") == "1"
    console.screenshot("policy-acked-by-the-bpf-agent")
    # the agent's detail: the policy held, with the tier its kernel gave each rule
    held = real_agent.record()["policies"][POLICY]
    assert held["version"] == 1 and held["tiers"]
    console.visit(f"agents?id={real_agent.agent_id}", "#agent-detail")
    for rule, tier in held["tiers"].items():
        console.wait_text("#agent-detail", f"{rule}: {tier}")
    assert str(binary) in " ".join(held["tiers"])
    console.screenshot("agent-holds-the-policy")
    stopped = wait_for(lambda: (r := _run(binary)) != "ran" and r, timeout=15,
                       what="the policy enforced")
    assert stopped in ("blocked", "killed")

    def enforced() -> dict[str, Any] | None:
        return next((e for e in real_agent.events(type="enforce")
                     if (e.get("enforcement") or {}).get("policy") == POLICY), None)
    event = wait_for(enforced, timeout=30, what="the enforce event on the server")
    assert event["enforcement"]["action"] == stopped
    seq = event["seq"]
    console.visit(f"events?type=enforce&agent={real_agent.agent_id}",
                  f'#events-list tr[data-seq="{seq}"]')
    row = console.css(f'#events-list tr[data-seq="{seq}"]')
    assert f"{stopped} {binary} (policy {POLICY})" in row.text
    row.click()
    console.wait_text("#event-detail h2", f"Event {seq}: enforce")
    detail = console.css("#event-detail").text
    assert POLICY in detail and str(binary) in detail and stopped in detail
    console.screenshot("enforce-event")
    # the overview counts it among the blocks
    blocks = real_agent.env.admin("GET", "/api/v1/overview")["blocks"]
    assert blocks >= 1
    console.visit("overview", "#stat-blocks")
    console.until(lambda: console.css("#stat-blocks .stat-value").text == str(blocks),
                  f"{blocks} blocks on the overview")
    console.screenshot("overview-blocks")
