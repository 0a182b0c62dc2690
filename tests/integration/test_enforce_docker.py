"""Drift and image scope against a REAL dockerd (overlay2) container. Root only."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import DOCKER_IMAGE, Dockerd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

DRIFT = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: no-drift}
spec:
  scope: {containers: {images: ["moray-test/*"]}}
  exec: {drift: block}
"""


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[AgentProc, Dockerd]]:
    with Dockerd() as d, AgentProc() as a:
        yield a, d


def test_drift_blocked_image_binaries_run(env: tuple[AgentProc, Dockerd]) -> None:
    agent, d = env
    driver = d.docker("info", "--format", "{{.Driver}}").stdout.strip()
    if driver != "overlay2":
        pytest.skip(f"dockerd storage driver is {driver}, drift needs overlayfs")
    agent.apply("no-drift", DRIFT)
    res = d.docker("run", "--rm", "--network", "none", DOCKER_IMAGE, "sh", "-c",
                   "/bin/echo image-ok; cp /bin/busybox /tmp/bb; /tmp/bb echo DRIFTED; "
                   "echo rc=$?", check=False)
    assert "image-ok" in res.stdout, res
    assert "DRIFTED" not in res.stdout and "rc=137" in res.stdout, res
    ev = agent.wait_event(lambda e: e.get("type") == "enforce"
                          and enforcement(e).get("kind") == "drift"
                          and enforcement(e).get("action") == "killed")
    assert enforcement(ev)["binary"] == "/tmp/bb"
    assert enforcement(ev)["rule"] == "exec.drift: block"
    assert ev["container"]["image"] == DOCKER_IMAGE


LABELS = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: web-labels}
spec:
  scope: {containers: {labels: {app: web}}}
  exec: {deny: [/bin/ls]}
"""


def test_label_selector(env: tuple[AgentProc, Dockerd]) -> None:
    """`docker run --label app=web` is covered by a policy selecting labels {app: web}
    from its first exec; the same container without the label is not."""
    agent, d = env
    agent.apply("web-labels", LABELS)
    script = "/bin/ls / >/dev/null; echo rc=$?"
    res = d.docker("run", "--rm", "--network", "none", "--label", "app=web",
                   "--name", "mr-label-web", DOCKER_IMAGE, "sh", "-c", script, check=False)
    assert "rc=137" in res.stdout, res
    ev = agent.wait_event(lambda e: e.get("type") == "enforce"
                          and (e.get("container") or {}).get("name") == "mr-label-web"
                          and enforcement(e).get("action") == "killed")
    assert enforcement(ev)["policy"] == "web-labels"
    assert enforcement(ev)["rule"] == "exec.deny: /bin/ls"
    assert ev["container"]["labels"] == {"app": "web", "org.moray.test": "1"}
    for extra in ([], ["--label", "app=db"]):
        res = d.docker("run", "--rm", "--network", "none", *extra, DOCKER_IMAGE, "sh", "-c",
                       script, check=False)
        assert "rc=0" in res.stdout, (extra, res)
    agent.delete("web-labels")
