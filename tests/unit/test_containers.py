"""ContainerResolver with fake runtimes, a fake cgroup tree and a fake netns reader."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from moray.agent.enrich.cgroups import CgroupIndex
from moray.agent.enrich.containers import Container, ContainerResolver
from moray.agent.enrich.netns import NetnsInfo, NetnsReader
from moray.agent.enrich.runtimes import (
    CgroupMatch,
    ContainerInfo,
    RuncRoot,
    RuncRuntime,
    Runtime,
)

FIX = Path(__file__).parent.parent / "fixtures" / "runtimes"
H = "b" * 64
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


class FakeRuntime:
    """A ContainerRuntime whose answers the test sets."""

    def __init__(self, kind: Runtime, infos: dict[str, ContainerInfo] | None = None) -> None:
        self._kind = kind
        self.infos = infos or {}
        self.calls = 0
        self.fail = False

    @property
    def kind(self) -> Runtime:
        return self._kind

    def inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom")
        return self.infos.get(match.container_id)


class FakeNetns(NetnsReader):
    def __init__(self) -> None:
        super().__init__("/nonexistent")
        self.by_pid: dict[int, NetnsInfo] = {}

    def inode(self, pid: int) -> int | None:
        info = self.by_pid.get(pid)
        return info.inode if info else None

    def read(self, pid: int) -> NetnsInfo | None:
        return self.by_pid.get(pid)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def index() -> CgroupIndex:
    idx = CgroupIndex("/nonexistent", "/nonexistent", rescan_interval=1e9)
    idx.add(1, "/")
    idx.add(10, f"/docker/{H}")
    idx.add(11, "/user.slice/user-0.slice/session-1.scope")
    idx.add(12, f"/kubepods/burstable/pod{UID}/{H}")
    idx.add(13, "/moray-fixture")
    idx._last_scan = 0.0  # no real rescans in unit tests
    return idx


def _docker_info() -> ContainerInfo:
    return ContainerInfo(Runtime.DOCKER, name="web", image="moray-test/busybox:1",
                         image_digest="sha256:" + "c" * 64)


def make(index: CgroupIndex, clock: Clock, *runtimes: FakeRuntime | RuncRuntime,
         netns: FakeNetns | None = None) -> ContainerResolver:
    return ContainerResolver(index, list(runtimes), netns, clock=clock, max_entries=8)


def test_docker_container_cached(index: CgroupIndex, clock: Clock) -> None:
    docker = FakeRuntime(Runtime.DOCKER, {H: _docker_info()})
    netns = FakeNetns()
    netns.by_pid[50] = NetnsInfo(4026532000, (("lo", ("127.0.0.1/8",)),
                                              ("eth0", ("10.0.0.2/24", "fd00::2/64"))))
    res = make(index, clock, docker, netns=netns)
    ctr = res.lookup(10, 50)
    assert ctr == Container(id=H, name="web", runtime="docker", image="moray-test/busybox:1",
                           image_digest="sha256:" + "c" * 64, pod_namespace=None,
                           pod_name=None, pod_uid=None, cgroup_id=10,
                           cgroup_path=f"/docker/{H}", netns=4026532000,
                           interfaces=netns.by_pid[50].interfaces)
    clock.now += 100
    assert res.lookup(10, 50) is ctr and res.lookup(10, None) is ctr
    assert docker.calls == 1


def test_to_json(index: CgroupIndex, clock: Clock) -> None:
    netns = FakeNetns()
    netns.by_pid[5] = NetnsInfo(77, (("lo", ("127.0.0.1/8",)),))
    res = make(index, clock, FakeRuntime(Runtime.CONTAINERD, {H: ContainerInfo(
        Runtime.CONTAINERD, name="app", image="r/app:1", pod_namespace="shop",
        pod_name="app-1", labels={"app": "web"}, pod_labels={"tier": "front"})}), netns=netns)
    ctr = res.lookup(12, 5)
    assert ctr is not None
    assert (ctr.labels, ctr.pod_labels) == ({"app": "web"}, {"tier": "front"})
    assert ctr.to_json() == {
        "id": H, "name": "app", "runtime": "containerd", "image": "r/app:1",
        "image_digest": None,
        "pod": {"namespace": "shop", "name": "app-1", "uid": UID, "labels": {"tier": "front"}},
        "cgroup_id": 12,
        "netns": {"inode": 77, "interfaces": [{"name": "lo", "addresses": ["127.0.0.1/8"]}]},
        "labels": {"app": "web"},
    }


def test_to_json_no_pod_no_netns(index: CgroupIndex, clock: Clock) -> None:
    res = make(index, clock, FakeRuntime(Runtime.DOCKER, {H: _docker_info()}))
    ctr = res.lookup(10, None)
    assert ctr is not None
    doc = ctr.to_json()
    assert doc["pod"] is None and doc["netns"] is None and doc["labels"] == {}


def test_host_processes(index: CgroupIndex, clock: Clock) -> None:
    docker = FakeRuntime(Runtime.DOCKER)
    res = make(index, clock, docker)
    assert res.lookup(1, 1) is None
    assert res.lookup(11, 1) is None
    assert res.lookup(999, None) is None  # unknown cgroup id
    assert docker.calls == 0 and res.errors == 0


def test_state_file_appears_later(index: CgroupIndex, clock: Clock) -> None:
    docker = FakeRuntime(Runtime.DOCKER)
    netns = FakeNetns()
    netns.by_pid[50] = NetnsInfo(9, ())
    res = make(index, clock, docker, netns=netns)
    first = res.lookup(10, 50)
    assert first is not None
    assert (first.runtime, first.id, first.name, first.image) == ("docker", H, H, None)
    assert res.lookup(10, 50) is first  # within retry_interval: no re-read
    assert docker.calls == 1
    docker.infos[H] = _docker_info()
    clock.now += 0.1
    later = res.lookup(10, 50)
    assert later is not None and later.name == "web" and later.netns == 9
    clock.now += 0.1
    assert res.lookup(10, 50) is later and docker.calls == 2


def test_retries_stop_after_window(index: CgroupIndex, clock: Clock) -> None:
    docker = FakeRuntime(Runtime.DOCKER)
    res = make(index, clock, docker, netns=FakeNetns())
    res.lookup(10, 50)
    clock.now += 6
    res.lookup(10, 50)
    calls = docker.calls
    clock.now += 1
    docker.infos[H] = _docker_info()
    partial = res.lookup(10, 50)
    assert partial is not None and partial.image is None and docker.calls == calls


def test_kubelet_cgroupfs_probes_readers(index: CgroupIndex, clock: Clock) -> None:
    docker = FakeRuntime(Runtime.DOCKER)
    crio = FakeRuntime(Runtime.CRIO, {H: ContainerInfo(Runtime.CRIO, name="api")})
    res = make(index, clock, docker, crio)
    ctr = res.lookup(12, None)
    assert ctr is not None and ctr.runtime == "cri-o" and ctr.pod_uid == UID
    assert docker.calls == 0  # CRI-O is asked before docker


def test_unknown_runtime(index: CgroupIndex, clock: Clock) -> None:
    res = make(index, clock)
    ctr = res.lookup(12, None)
    assert ctr is not None and ctr.runtime == "unknown" and ctr.id == H


def test_plain_runc_through_state_index(index: CgroupIndex, clock: Clock) -> None:
    runc = RuncRuntime([RuncRoot(str(FIX / "runc/run-runc"), Runtime.RUNC)])
    res = make(index, clock, runc)
    ctr = res.lookup(13, None)
    assert ctr is not None
    assert (ctr.runtime, ctr.id, ctr.name, ctr.image) == \
        ("runc", "moray-fixture", "moray-fixture", "moray-test/busybox:1")


def test_runc_state_late(index: CgroupIndex, clock: Clock, tmp_path: Path) -> None:
    """A runc cgroup looks like a host one until runc writes state.json."""
    runc = RuncRuntime([RuncRoot(str(tmp_path), Runtime.RUNC)])
    res = make(index, clock, runc)
    assert res.lookup(13, None) is None
    (tmp_path / "moray-fixture").mkdir()
    shutil.copy(FIX / "runc/run-runc/moray-fixture/state.json",
            tmp_path / "moray-fixture" / "state.json")
    clock.now += 0.1
    ctr = res.lookup(13, None)
    assert ctr is not None and ctr.runtime == "runc"


def test_exec_rereads_a_young_unmatched_cgroup_at_once_a_bounded_number_of_times(
        index: CgroupIndex, clock: Clock, tmp_path: Path) -> None:
    """runc writes state.json between runc init's first events and the container process's
    exec, often within retry_interval: an exec re-reads at once (retry_now), at most
    URGENT_MAX times per cgroup, so an exec storm in a new host cgroup stays cheap."""
    runc = RuncRuntime([RuncRoot(str(tmp_path), Runtime.RUNC)])
    res = make(index, clock, runc)
    assert res.lookup(13, None) is None  # runc init's events: no state yet
    (tmp_path / "moray-fixture").mkdir()
    shutil.copy(FIX / "runc/run-runc/moray-fixture/state.json",
                tmp_path / "moray-fixture" / "state.json")
    assert res.lookup(13, None) is None  # not an exec: within retry_interval, cached
    ctr = res.lookup(13, None, retry_now=True)  # the container's first exec, same instant
    assert ctr is not None and ctr.runtime == "runc"

    host = make(index, clock, runc)
    host.lookup(11, None)
    misses = host.misses
    for _ in range(100):  # an exec storm in a young host cgroup, all within the interval
        assert host.lookup(11, None, retry_now=True) is None
    assert host.misses - misses == ContainerResolver.URGENT_MAX


def test_cgroup_events(index: CgroupIndex, clock: Clock) -> None:
    docker = FakeRuntime(Runtime.DOCKER, {"d" * 64: _docker_info()})
    res = make(index, clock, docker)
    res.on_cgroup_created(20, f"/system.slice/docker-{'d' * 64}.scope")
    ctr = res.lookup(20, None)
    assert ctr is not None and ctr.cgroup_path == f"/system.slice/docker-{'d' * 64}.scope"
    res.on_cgroup_removed(20)
    assert len(res) == 0 and index.path(20) is None
    assert res.lookup(20, None) is None


def test_errors_are_counted_not_raised(index: CgroupIndex, clock: Clock) -> None:
    docker = FakeRuntime(Runtime.DOCKER)
    docker.fail = True
    res = make(index, clock, docker)
    assert res.lookup(10, None) is None
    assert res.errors == 1


def test_cache_is_bounded(clock: Clock) -> None:
    idx = CgroupIndex("/nonexistent", "/nonexistent")
    idx._last_scan = 0.0
    idx.rescan_interval = 1e9
    infos = {}
    for i in range(20):
        cid = f"{i:064x}"
        idx.add(100 + i, f"/docker/{cid}")
        infos[cid] = _docker_info()
    res = make(idx, clock, FakeRuntime(Runtime.DOCKER, infos))
    for i in range(20):
        assert res.lookup(100 + i, None) is not None
    assert len(res) == 8


def test_for_host_with_injected_paths(tmp_path: Path) -> None:
    cg = tmp_path / "cgroup"
    (cg / "docker" / H).mkdir(parents=True)
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(
        f"41 31 0:38 / {cg} rw,relatime - cgroup2 cgroup2 rw\n")
    res = ContainerResolver.for_host(proc=str(proc), host_root=str(tmp_path / "host"))
    assert res.cgroups.cgroup_root == str(cg)
    ctr = res.lookup(os.stat(cg / "docker" / H).st_ino, None)
    assert ctr is not None and ctr.runtime == "docker" and ctr.image is None
