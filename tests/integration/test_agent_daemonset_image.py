"""The Helm chart's agent DaemonSet, for real: its own pod spec (image, args, env,
securityContext, hostPID, volume mounts, probes) rendered from the chart and translated by
tests/helpers/podspec.py, run on a private dockerd with the agent image `make images` built
from the Debian packages. The agent inside sees a sibling container's exec, open and
connect with the container's identity, enforces a local policy (the chart's
``localPolicies`` ConfigMap), answers its probes, stops cleanly on SIGTERM within the grace
period, and a roll (old pod stopped, new one started, as the DaemonSet's update strategy
does) leaves no gap: a denied binary run in a loop all along never runs.

The host paths of the spec: ``/`` is a recursive bind of this host's / made rshared (this
host's mounts are private, and docker, like the kubelet, refuses a HostToContainer mount of
a private one); /sys/fs/bpf a bpffs instance of the test's own (shared), so the agent's pins
are the test's and the chart's unload init container removes them at the end; /run/moray
and /var/lib/moray-agent the test's directories (DirectoryOrCreate). Where this host cannot
grant every capability, ``privileged`` runs as every capability it can
(podspec.privileged_options). Loads BPF: run under /tmp/moray-integration.lock. Skips when
the images are not built (tests/helpers/images.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chart import one, render
from tests.helpers.containers import DOCKER_CLI, DOCKER_IMAGE, Dockerd
from tests.helpers.images import archive, reference
from tests.helpers.podspec import DockerRun, privileged_options, translate
from tests.helpers.policies import ctr_policy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

POLICY = ctr_policy("ds-deny", "moray-ds-*", "exec: {deny: [/bin/ls]}")
VALUES: dict[str, Any] = {"agent": {"enrollment": {"enabled": False},
                                    "localPolicies": {"ds-deny.yaml": POLICY}}}
# start-up: 15 s idle, over a minute under load (the chart's startupProbe allows 300 s)
READY_TIMEOUT = 300


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


class Node:
    """The node the DaemonSet's pod runs on: a private dockerd with the agent image, the
    host paths of the spec, the chart's objects it needs."""

    def __init__(self, dockerd: Dockerd, root: Path, image: str) -> None:
        self.d, self.root, self.image = dockerd, root, image
        docs = render(VALUES)
        self.ds = one(docs, "DaemonSet")
        self.pod = self.ds["spec"]["template"]["spec"]
        cm = one(docs, "ConfigMap", "moray-agent-policies")
        self.config_maps = {cm["metadata"]["name"]: cm["data"]}
        self.paths = {"/": root / "host", "/sys/fs/bpf": root / "bpffs",
                      "/run/moray": root / "run-moray", "/var/lib/moray-agent": root / "state"}
        self.docker = [DOCKER_CLI, "-H", f"unix://{dockerd.sock}"]

    def host_path(self, path: str) -> str:
        return str(self.paths.get(path, Path(path)))

    def translate(self, pod: dict[str, Any], container: str, n: int, **kw: Any) -> DockerRun:
        return translate(pod, container, workdir=self.root / f"files-{n}",
                         pod_name=f"moray-agent-{n}", node_name="node-image",
                         config_maps=self.config_maps, host_path=self.host_path,
                         privileged=privileged_options(), **kw)

    def run(self, run: DockerRun, *, detach: bool = True) -> subprocess.CompletedProcess[str]:
        run.prepare()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "DOCKER_CONFIG": str(self.d.work / "cli"), **run.environ}
        res = subprocess.run(run.argv(docker=self.docker, detach=detach), env=env,
                             capture_output=True, text=True, check=False, timeout=300)
        assert res.returncode == 0, f"{run.shell(docker=self.docker)}\n{res.stderr}{res.stdout}"
        return res

    def pid(self, name: str) -> int:
        return int(json.loads(self.d.docker("inspect", name).stdout)[0]["State"]["Pid"])

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.d.docker("logs", name, timeout=60).stdout.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def wait_event(self, name: str, pred: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 30) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events(name) if pred(e)), None)
        found: dict[str, Any] = _wait(what, find, timeout)
        return found

    def probe(self, run: DockerRun, kind: str) -> bool:
        cmd = run.probes[kind].command(self.pid(run.name), container=run.name,
                                       docker=self.docker)
        return subprocess.run(cmd, capture_output=True, check=False, timeout=30).returncode == 0

    def start_agent(self, n: int) -> DockerRun:
        run = self.translate(self.pod, "agent", n)
        assert run.image == self.image          # the chart's default = what make images built
        self.run(run)
        try:
            _wait("the agent's readiness probe", lambda: self.probe(run, "readiness"),
                  READY_TIMEOUT)
        except AssertionError:
            raise AssertionError(self.d.docker("logs", "--tail", "40", run.name).stderr) from None
        return run

    def stop(self, run: DockerRun) -> dict[str, Any]:
        self.d.docker("stop", run.name, timeout=run.stop_timeout + 30)
        state: dict[str, Any] = json.loads(self.d.docker("inspect", run.name).stdout)[0]["State"]
        return state

    def unload(self) -> None:
        """The chart's uninstall step (agent.unloadOnly): its init container removes every
        pin of the node's bpffs."""
        pod = one(render({"agent": {**VALUES["agent"], "unloadOnly": True}}),
                  "DaemonSet")["spec"]["template"]["spec"]
        self.run(self.translate(pod, "unload", 99, init=True), detach=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tar = archive("agent")
    root = tmp_path_factory.mktemp("node")
    host, bpffs = root / "host", root / "bpffs"
    host.mkdir()
    bpffs.mkdir()
    mounted: list[Path] = []
    try:
        _mount("--rbind", "/", str(host))
        mounted.append(host)
        _mount("--make-rshared", str(host))
        _mount("-t", "bpf", "bpf", str(bpffs))
        mounted.append(bpffs)
        _mount("--make-shared", str(bpffs))
        with Dockerd(root / "dockerd") as d:
            d.docker("load", "-i", str(tar), timeout=300)
            n = Node(d, root, reference(tar))
            try:
                yield n
            finally:
                # a failed test may leave an agent running: gone before the pins are
                ids = d.docker("ps", "-aq", check=False).stdout.split()
                if ids:
                    d.docker("rm", "-f", *ids, check=False, timeout=120)
                n.unload()
                assert not list(bpffs.iterdir()) or not list((bpffs / "moray").rglob("*"))
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(m)], check=False, capture_output=True)


def _container(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e.get("container") or {}).get("name") == name


@pytest.fixture(scope="module")
def agent(node: Node) -> DockerRun:
    """The DaemonSet's pod on the node, ready (the roll test replaces it)."""
    return node.start_agent(1)


def test_daemonset_agent_sees_enforces_and_answers_probes(node: Node, agent: DockerRun) -> None:
    assert node.probe(agent, "liveness") and node.probe(agent, "startup")
    # hostPID: the agent is a process of the host's pid namespace
    assert os.readlink(f"/proc/{node.pid(agent.name)}/ns/pid") == os.readlink("/proc/self/ns/pid")

    script = ("nc -l -p 8080 >/dev/null & sleep 0.3; cat /etc/shadow >/dev/null; "
              "echo hi | nc 127.0.0.1 8080; /bin/ls / >/dev/null; echo ls-rc=$?; exit 3")
    c = node.d.run("/bin/sh", "-c", script, name="moray-ds-sibling")
    node.d.docker("wait", c.id, timeout=60)
    assert "ls-rc=137" in node.d.docker("logs", c.id).stdout        # killed at exec
    sibling = _container("moray-ds-sibling")
    sh = node.wait_event(agent.name, lambda e: e.get("type") == "exec" and sibling(e)
                         and e["process"]["pid"] == c.pid, "the sibling's shell exec")
    cont = sh["container"]
    assert (cont["runtime"], cont["id"], cont["image"]) == ("docker", c.id, DOCKER_IMAGE)
    op = node.wait_event(agent.name, lambda e: e.get("type") == "open" and sibling(e)
                         and e["file"]["path"] == "/etc/shadow", "the sibling's open")
    assert op["process"]["args"] == ["cat", "/etc/shadow"]
    conn = node.wait_event(agent.name, lambda e: e.get("type") == "connect" and sibling(e)
                           and e["network"]["dport"] == 8080, "the sibling's connect")
    assert conn["network"]["daddr"] == "127.0.0.1"
    deny = node.wait_event(agent.name, lambda e: e.get("type") == "enforce" and sibling(e)
                           and (e.get("enforcement") or {}).get("action") == "killed",
                           "the denied exec")
    assert deny["enforcement"]["policy"] == "ds-deny"
    assert deny["enforcement"]["rule"] == "exec.deny: /bin/ls"


def test_daemonset_roll_stops_cleanly_with_no_enforcement_gap(node: Node,
                                                               agent: DockerRun) -> None:
    """The DaemonSet's roll on one node (maxSurge 0): the old pod stopped (SIGTERM, as the
    kubelet: a clean exit within the grace period), the new one started; the pins outlive
    the old agent and the new one adopts them. A sibling runs the denied binary in a loop
    all along: it never runs."""
    loop = ("i=0; while [ ! -e /tmp/go ]; do /bin/ls / >/dev/null 2>&1; echo rc=$?; "
            "i=$((i+1)); done; echo runs=$i")
    c = node.d.run("/bin/sh", "-c", loop, name="moray-ds-roll")
    _wait("the loop's first denials", lambda: node.d.docker("logs", c.id).stdout.count(
        "rc=137") >= 3)
    # docker stop = the kubelet's SIGTERM, then SIGKILL after the grace period (exit 137)
    state = node.stop(agent)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    node.d.docker("rm", agent.name)
    assert list((node.root / "bpffs" / "moray").iterdir())     # enforcement stays pinned
    gap_start = node.d.docker("logs", c.id).stdout.count("rc=")
    new = node.start_agent(2)
    # the loop ran between the two agents and while the new one started
    _wait("denials after the new agent's readiness", lambda: node.d.docker(
        "logs", c.id).stdout.count("rc=") > gap_start + 3)
    node.d.docker("exec", c.id, "touch", "/tmp/go")
    node.d.docker("wait", c.id, timeout=60)
    rcs = [x for x in node.d.docker("logs", c.id).stdout.split() if x.startswith("rc=")]
    print(f"roll: {len(rcs)} runs of the denied binary, {len(rcs) - gap_start} from the old "
          f"agent's exit to after the new one's readiness")
    assert rcs and set(rcs) == {"rc=137"}, sorted(set(rcs))
    state = node.stop(new)
    assert state["ExitCode"] == 0, state
    node.d.docker("rm", new.name)
