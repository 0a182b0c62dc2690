"""ContainerResolver against REAL containers (runc, dockerd) on this host. Root only."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from moray.agent.enrich.cgroups import find_cgroup2_mount
from moray.agent.enrich.containers import ContainerResolver
from moray.agent.enrich.runtimes import DockerDaemon, DockerRuntime, default_runtimes
from tests.helpers.containers import DOCKER_IMAGE, Dockerd, cgroup_of, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture
def resolver() -> ContainerResolver:
    return ContainerResolver.for_host()


def test_cgroup2_mount_found() -> None:
    mount = find_cgroup2_mount()
    assert mount is not None and os.path.isdir(mount)


def test_host_process_is_not_a_container(resolver: ContainerResolver) -> None:
    _, cgroup_id = cgroup_of(os.getpid())
    assert resolver.lookup(cgroup_id, os.getpid()) is None


def test_runc_container(resolver: ContainerResolver) -> None:
    with run_runc("moray-live-runc", ["sleep", "30"],
                  annotations={"org.opencontainers.image.ref.name": "moray-test/busybox:1"}
                  ) as ctr:
        # Held before its first instruction: runc has not written state.json yet.
        early = resolver.lookup(ctr.cgroup_id, ctr.pid)
        assert early is None or early.id == ctr.id
        ctr.start()
        deadline = time.monotonic() + 5
        found = resolver.lookup(ctr.cgroup_id, ctr.pid)
        while (found is None or found.image is None) and time.monotonic() < deadline:
            time.sleep(0.06)
            found = resolver.lookup(ctr.cgroup_id, ctr.pid)
        assert found is not None
        assert (found.runtime, found.id, found.name) == ("runc", ctr.id, ctr.id)
        assert found.image == "moray-test/busybox:1"
        assert found.cgroup_id == ctr.cgroup_id and found.cgroup_path == ctr.cgroup_path
        assert found.netns == os.stat(f"/proc/{ctr.pid}/ns/net").st_ino
        assert found.netns != os.stat("/proc/self/ns/net").st_ino
        assert found.interfaces == (("lo", ("127.0.0.1/8", "::1/128")),)
        t0 = time.perf_counter()
        assert resolver.lookup(ctr.cgroup_id, ctr.pid) is found  # cached: a dict hit
        assert time.perf_counter() - t0 < 0.001
        assert found.to_json()["netns"]["interfaces"][0]["name"] == "lo"
    resolver.on_cgroup_removed(ctr.cgroup_id)
    assert len(resolver) == 0 or resolver.lookup(ctr.cgroup_id) is None


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    with Dockerd() as daemon:
        yield daemon


@pytest.mark.docker
def test_docker_container_discovered_data_root(dockerd: Dockerd) -> None:
    """Data root found from the running dockerd's --data-root argument."""
    resolver = ContainerResolver.for_host()
    ctr = dockerd.run("sleep", "30", name="moray-live-web")
    t0 = time.perf_counter()
    found = resolver.lookup(ctr.cgroup_id, ctr.pid)
    first_ms = (time.perf_counter() - t0) * 1000
    assert found is not None
    assert (found.runtime, found.id, found.name) == ("docker", ctr.id, "moray-live-web")
    assert found.image == DOCKER_IMAGE
    assert found.image_digest == dockerd.image_id
    assert found.cgroup_path == f"/docker/{ctr.id}"
    assert found.netns == os.stat(f"/proc/{ctr.pid}/ns/net").st_ino
    assert [name for name, _ in found.interfaces] == ["lo"]
    assert found.to_json()["pod"] is None
    assert first_ms < 20, f"first lookup took {first_ms:.1f} ms"


@pytest.mark.docker
def test_docker_container_explicit_data_root(dockerd: Dockerd) -> None:
    daemon = DockerDaemon(str(dockerd.data_root), str(dockerd.exec_root))
    runtimes = [DockerRuntime([daemon]), *default_runtimes()[1:]]
    base = ContainerResolver.for_host()
    resolver = ContainerResolver(base.cgroups, runtimes, base.netns)
    ctr = dockerd.run("sleep", "30")
    found = resolver.lookup(ctr.cgroup_id, ctr.pid)
    assert found is not None and found.runtime == "docker"
    assert found.name == ctr.name and found.image == DOCKER_IMAGE


def test_short_lived_runc_container_named_after_delete() -> None:
    """A container that ran and was deleted (`runc delete`) before its events were
    enriched (an agent behind on its queue) is still named: with the watcher, runc's
    state was read when runc wrote it."""
    resolver = ContainerResolver.for_host()
    resolver.start_watch()
    try:
        with run_runc("moray-live-brief", ["true"]) as ctr:
            # the kernel's cgroup mkdir record, as the pipeline would feed it
            resolver.on_cgroup_created(ctr.cgroup_id, ctr.cgroup_path)
            assert ctr.wait(30).exit_code == 0
        assert not os.path.exists("/run/runc/moray-live-brief")   # deleted
        found = resolver.lookup(ctr.cgroup_id, None)
        assert found is not None and (found.runtime, found.id) == ("runc", ctr.id)
    finally:
        resolver.stop_watch()
