"""Cgroup path parsing for every runtime layout, and runtime state readers on fixtures."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from moray.agent.enrich.runtimes import (
    CgroupMatch,
    DockerDaemon,
    DockerRuntime,
    OciBundleRuntime,
    PodmanRuntime,
    QoS,
    RuncRoot,
    RuncRuntime,
    Runtime,
    find_dockerds,
    parse_cgroup_path,
)
from moray.agent.enrich.runtimes.docker import _dockerd_options

FIX = Path(__file__).parent.parent / "fixtures" / "runtimes"
ID = "4c0c108d278e11bdb3e508179146194f99f92df2b2d227d616c982f430d08ad7"  # docker fixture
PODMAN_ID = "f90afa8d5583f9fef0b8fa5dd429d4ab86e7bc553ce17e38f83d71a8bf17fd2d"
CRI_ID = "7e1f0c4a9b2d3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7"
SANDBOX_ID = "3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d"
CRIO_ID = "9a8b7c6d5e4f30211f2e3d4c5b6a79880a1b2c3d4e5f60718293a4b5c6d7e8f9"
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SD_UID = UID.replace("-", "_")
H = "a" * 64

D, CD, CRIO, POD = Runtime.DOCKER, Runtime.CONTAINERD, Runtime.CRIO, Runtime.PODMAN
BURST, BEST, GUAR = QoS.BURSTABLE, QoS.BESTEFFORT, QoS.GUARANTEED


@pytest.mark.parametrize(("path", "expected"), [
    # docker: cgroupfs and systemd drivers
    (f"/docker/{H}", CgroupMatch(D, H)),
    (f"/system.slice/docker-{H}.scope", CgroupMatch(D, H)),
    (f"/docker/{H}/init.scope", CgroupMatch(D, H)),  # systemd inside the container
    # containerd: ctr / nerdctl (/<namespace>/<id>) and CRI with systemd
    ("/default/moray-ctr", CgroupMatch(CD, "moray-ctr", namespace="default")),
    (f"/k8s.io/{H}", CgroupMatch(CD, H, namespace="k8s.io")),
    (f"/system.slice/cri-containerd-{H}.scope", CgroupMatch(CD, H)),
    # podman: cgroupfs, systemd, pods; conmon is not the container
    (f"/libpod_parent/libpod-{H}", CgroupMatch(POD, H)),
    (f"/machine.slice/libpod-{H}.scope", CgroupMatch(POD, H)),
    (f"/machine.slice/libpod-{H}.scope/container", CgroupMatch(POD, H)),
    (f"/machine.slice/machine-libpod_pod_{'b' * 64}.slice/libpod-{H}.scope",
     CgroupMatch(POD, H)),
    (f"/machine.slice/libpod-conmon-{H}.scope", None),
    ("/libpod_parent/conmon", None),
    # CRI-O: systemd and cgroupfs; conmon excluded
    (f"/system.slice/crio-{H}.scope", CgroupMatch(CRIO, H)),
    (f"/crio-{H}", CgroupMatch(CRIO, H)),
    (f"/system.slice/crio-conmon-{H}.scope", None),
    # Kubernetes, systemd driver: all QoS classes and both CRI runtimes
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD_UID}.slice/"
     f"cri-containerd-{H}.scope", CgroupMatch(CD, H, UID, BURST)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SD_UID}.slice/"
     f"crio-{H}.scope", CgroupMatch(CRIO, H, UID, BEST)),
    (f"/kubepods.slice/kubepods-pod{SD_UID}.slice/cri-containerd-{H}.scope",
     CgroupMatch(CD, H, UID, GUAR)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD_UID}.slice/"
     f"docker-{H}.scope", CgroupMatch(D, H, UID, BURST)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SD_UID}.slice/"
     f"crio-conmon-{H}.scope", None),
    # Kubernetes, cgroupfs driver: the runtime is not in the path
    (f"/kubepods/burstable/pod{UID}/{H}", CgroupMatch(None, H, UID, BURST)),
    (f"/kubepods/besteffort/pod{UID}/{H}", CgroupMatch(None, H, UID, BEST)),
    (f"/kubepods/pod{UID}/{H}", CgroupMatch(None, H, UID, GUAR)),
    (f"/kubepods/besteffort/pod{UID}/crio-{H}", CgroupMatch(CRIO, H, UID, BEST)),
    # nested: the agent (or a whole node, kind) in a container; innermost wins
    (f"/docker/{'c' * 64}/kubelet.slice/kubelet-kubepods.slice/"
     f"kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{SD_UID}.slice/"
     f"cri-containerd-{H}.scope", CgroupMatch(CD, H, UID, BURST)),
    (f"/system.slice/docker-{'c' * 64}.scope/kubepods/burstable/pod{UID}/{H}",
     CgroupMatch(None, H, UID, BURST)),
    (f"/docker/{'c' * 64}/docker/{H}", CgroupMatch(D, H)),
    (f"/docker/{'c' * 64}/libpod_parent/conmon", CgroupMatch(D, "c" * 64)),
    (f"/my-parent/{H}", CgroupMatch(None, H)),  # docker --cgroup-parent
    # host cgroups
    ("/", None),
    ("", None),
    ("/user.slice/user-1000.slice/session-3.scope", None),
    ("/system.slice/docker.service", None),
    ("/system.slice/containerd.service", None),
    ("/kubepods.slice/kubepods-burstable.slice", None),
    ("/moray-fixture", None),  # plain runc: only the runc state index knows it
    (f"/docker/{H[:12]}", None),
])
def test_parse_cgroup_path(path: str, expected: CgroupMatch | None) -> None:
    assert parse_cgroup_path(path) == expected


def test_parse_custom_containerd_namespace() -> None:
    assert parse_cgroup_path("/buildkit/x1") is None
    assert parse_cgroup_path("/buildkit/x1", frozenset({"buildkit"})) == \
        CgroupMatch(CD, "x1", namespace="buildkit")


# --------------------------------------------------------------------------- docker


def test_docker_config_v2() -> None:
    rt = DockerRuntime([DockerDaemon(str(FIX / "docker/data"), str(FIX / "docker/exec"))])
    info = rt.inspect(CgroupMatch(D, ID))
    capture = json.loads((FIX / "docker/capture.json").read_text())
    assert info is not None
    assert (info.runtime, info.name, info.image) == (D, "moray-web", "moray-test/busybox:1")
    assert info.image_digest == capture["image_id"]
    assert info.pod_uid is None
    assert rt.inspect(CgroupMatch(D, H)) is None  # missing: None, not an error


def test_docker_kubernetes_labels(tmp_path: Path) -> None:
    src = FIX / "docker/data/containers" / ID / "config.v2.json"
    doc = json.loads(src.read_text())
    doc["Config"]["Labels"] = {"io.kubernetes.pod.namespace": "shop",
                               "io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.uid": UID}
    (tmp_path / "containers" / H).mkdir(parents=True)
    (tmp_path / "containers" / H / "config.v2.json").write_text(json.dumps(doc))
    info = DockerRuntime([DockerDaemon(str(tmp_path), "/nonexistent")]).inspect(
        CgroupMatch(D, H))
    assert info is not None
    assert (info.pod_namespace, info.pod_name, info.pod_uid) == ("shop", "web-1", UID)


def test_docker_malformed_state(tmp_path: Path) -> None:
    (tmp_path / "containers" / H).mkdir(parents=True)
    (tmp_path / "containers" / H / "config.v2.json").write_text("{not json")
    rt = DockerRuntime([DockerDaemon(str(tmp_path), str(tmp_path))])
    assert rt.inspect(CgroupMatch(D, H)) is None


def _fake_proc(tmp_path: Path, pid: int, comm: str, argv: list[str]) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "comm").write_text(comm + "\n")
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return proc


def test_dockerd_options() -> None:
    assert _dockerd_options(["dockerd", "--data-root", "/d", "--exec-root=/e", "-H", "x"]) == \
        {"data-root": "/d", "exec-root": "/e"}
    assert _dockerd_options(["dockerd", "-g", "/old"]) == {"data-root": "/old"}


def test_find_dockerds_from_proc(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, 4242, "dockerd",
                      ["dockerd", "--iptables=false", "--data-root", "/srv/docker",
                       "--exec-root=/run/d2"])
    (proc / "77").mkdir()
    (proc / "77" / "comm").write_text("sleep\n")
    (proc / "self").mkdir()
    daemons = find_dockerds(str(proc))
    root = f"{proc}/4242/root"
    assert daemons == [DockerDaemon(root + "/srv/docker", root + "/run/d2")]


def test_find_dockerds_daemon_json(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, 10, "dockerd", ["/usr/sbin/dockerd"])
    conf = proc / "10" / "root" / "etc" / "docker"
    conf.mkdir(parents=True)
    (conf / "daemon.json").write_text(json.dumps({"data-root": "/data/docker"}))
    root = f"{proc}/10/root"
    assert find_dockerds(str(proc)) == [DockerDaemon(root + "/data/docker", root + "/run/docker")]


def test_docker_discovers_data_root_through_proc(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, 99, "dockerd", ["dockerd", "--data-root", "/dd"])
    dest = proc / "99" / "root" / "dd"
    shutil.copytree(FIX / "docker/data", dest)
    now = [0.0]
    rt = DockerRuntime(proc=str(proc), clock=lambda: now[0])
    info = rt.inspect(CgroupMatch(D, ID))
    assert info is not None and info.name == "moray-web"
    assert rt.runc_roots() == [RuncRoot(f"{proc}/99/root/run/docker/runtime-runc/*", D)]


def test_docker_default_data_root_without_daemon(tmp_path: Path) -> None:
    host = tmp_path / "host"
    shutil.copytree(FIX / "docker/data", host / "var/lib/docker")
    (tmp_path / "proc").mkdir()
    rt = DockerRuntime(proc=str(tmp_path / "proc"), host_root=str(host))
    info = rt.inspect(CgroupMatch(D, ID))
    assert info is not None and info.image == "moray-test/busybox:1"


# --------------------------------------------------------------------------- runc


def test_runc_state_maps_cgroup_to_container() -> None:
    rt = RuncRuntime([RuncRoot(str(FIX / "runc/run-runc"), Runtime.RUNC)])
    match = rt.find("/moray-fixture")
    assert match == CgroupMatch(Runtime.RUNC, "moray-fixture")
    info = rt.inspect(match)
    assert info is not None
    assert (info.runtime, info.name, info.image) == (Runtime.RUNC, "moray-fixture",
                                                     "moray-test/busybox:1")
    assert rt.find("/something-else") is None


def test_runc_roots_of_docker_and_podman() -> None:
    rt = RuncRuntime([RuncRoot(str(FIX / "docker/exec/runtime-runc/*"), D),
                      RuncRoot(str(FIX / "podman/runc"), Runtime.RUNC)])
    assert rt.find(f"/docker/{ID}") == CgroupMatch(D, ID, namespace="moby")
    podman = rt.find(f"/libpod_parent/libpod-{PODMAN_ID}")
    assert podman == CgroupMatch(Runtime.RUNC, PODMAN_ID)


def _runc_state(tmp_path: Path, cid: str) -> None:
    state = json.loads((FIX / "runc/run-runc/moray-fixture/state.json").read_text())
    state["cgroup_paths"] = {"": f"/sys/fs/cgroup/unified/{cid}"}
    (tmp_path / cid).mkdir(exist_ok=True)
    tmp = tmp_path / cid / "state-tmp"
    tmp.write_text(json.dumps(state))
    tmp.rename(tmp_path / cid / "state.json")   # as runc writes it


def test_runc_state_kept_a_while_after_delete(tmp_path: Path) -> None:
    """Events still queued after `runc delete` are still named, for keep_gone seconds."""
    now = [100.0]
    rt = RuncRuntime([RuncRoot(str(tmp_path), Runtime.RUNC)], keep_gone=60,
                     clock=lambda: now[0])
    _runc_state(tmp_path, "short")
    match = rt.find("/short")
    assert match == CgroupMatch(Runtime.RUNC, "short")
    shutil.rmtree(tmp_path / "short")
    rt.rescan()
    assert rt.find("/short") == match
    info = rt.inspect(match)
    assert info is not None and info.image == "moray-test/busybox:1"   # read back then
    now[0] += 61
    rt.rescan()
    assert rt.find("/short") is None and rt.inspect(match) is None


def test_runc_watch_reads_state_when_written(tmp_path: Path) -> None:
    """With the watcher, a container's state is indexed when runc writes it: a container
    created and deleted before anyone asked is still found afterwards."""
    root = tmp_path / "runc"
    root.mkdir()
    rt = RuncRuntime([RuncRoot(str(root), Runtime.RUNC)])
    assert rt.start_watch()
    try:
        (root / "brief").mkdir()       # the watcher adds this directory's watch, or its
        _runc_state(root, "brief")
        deadline = time.monotonic() + 5   # rescan after that reads the state

        while "/brief" not in rt._by_cgroup and time.monotonic() < deadline:
            time.sleep(0.01)
        shutil.rmtree(root / "brief")
        # asked only now, after the state is gone: still named
        assert rt.find("/brief") == CgroupMatch(Runtime.RUNC, "brief")
    finally:
        rt.stop_watch()


def test_runc_state_appears_later(tmp_path: Path) -> None:
    rt = RuncRuntime([RuncRoot(str(tmp_path), Runtime.RUNC)], keep_gone=0)
    (tmp_path / "late").mkdir()  # runc made the dir (exec.fifo), state not yet written
    assert rt.find("/late") is None
    state = json.loads((FIX / "runc/run-runc/moray-fixture/state.json").read_text())
    state["cgroup_paths"] = {"": "/sys/fs/cgroup/unified/late"}
    (tmp_path / "late" / "state.json").write_text(json.dumps(state))
    assert rt.find("/late") == CgroupMatch(Runtime.RUNC, "late")
    shutil.rmtree(tmp_path / "late")
    rt.rescan()
    assert rt.find("/late") is None


def test_runc_unified_host_paths() -> None:
    rt = RuncRuntime([])
    assert rt.relative_cgroup("/sys/fs/cgroup/unified/a/b") == "/a/b"
    assert rt.relative_cgroup("/sys/fs/cgroup/system.slice/x.scope") == "/system.slice/x.scope"
    assert rt.relative_cgroup("/sys/fs/cgroup") == "/"


# --------------------------------------------------------------------------- podman


def test_podman_storage() -> None:
    rt = PodmanRuntime(str(FIX / "podman/storage"))
    info = rt.inspect(CgroupMatch(POD, PODMAN_ID))
    assert info is not None
    assert (info.name, info.image) == ("moray-pod-web", "localhost/moray-test/busybox:1")
    assert info.image_digest == \
        "sha256:49f01d05689a5f4e3ce219afb008ea61ed06b362c32533ef6d98bbee13486e5a"
    assert rt.inspect(CgroupMatch(POD, H)) is None


def test_podman_image_name_from_images_json(tmp_path: Path) -> None:
    shutil.copytree(FIX / "podman/storage", tmp_path / "s")
    path = tmp_path / "s/overlay-containers/containers.json"
    rows = json.loads(path.read_text())
    rows[0]["metadata"] = "{}"
    path.write_text(json.dumps(rows))
    info = PodmanRuntime(str(tmp_path / "s")).inspect(CgroupMatch(POD, PODMAN_ID))
    assert info is not None and info.image == "localhost/moray-test/busybox:1"


def test_podman_no_storage(tmp_path: Path) -> None:
    assert PodmanRuntime(str(tmp_path)).inspect(CgroupMatch(POD, H)) is None


# --------------------------------------------------------------------------- OCI bundles


def _containerd() -> OciBundleRuntime:
    pattern = str(FIX / "containerd/io.containerd.runtime.v2.task/{ns}/{id}/config.json")
    return OciBundleRuntime(CD, (pattern,))


def test_containerd_cri_annotations() -> None:
    info = _containerd().inspect(CgroupMatch(CD, CRI_ID, UID, BURST))
    assert info is not None
    assert (info.name, info.image) == ("web", "registry.local/web:1.4")
    assert (info.pod_namespace, info.pod_name, info.pod_uid) == \
        ("shop", "web-7d4b9c-x2x9q", UID)


def test_containerd_sandbox() -> None:
    info = _containerd().inspect(CgroupMatch(None, SANDBOX_ID, UID, BURST))
    assert info is not None and info.name == "POD" and info.pod_name == "web-7d4b9c-x2x9q"


def test_containerd_plain_ctr() -> None:
    info = _containerd().inspect(CgroupMatch(CD, "moray-ctr", namespace="default"))
    assert info is not None
    assert (info.name, info.image, info.pod_name) == ("moray-ctr", None, None)


def test_containerd_docker_bundle_captured() -> None:
    """dockerd's own containerd bundle (moby namespace): no CRI annotations."""
    pattern = str(FIX / "docker/exec/containerd/daemon/io.containerd.runtime.v2.task"
                  "/{ns}/{id}/config.json")
    info = OciBundleRuntime(CD, (pattern,)).inspect(CgroupMatch(CD, ID, namespace="moby"))
    assert info is not None and info.name == ID and info.image is None


def test_crio_annotations() -> None:
    pattern = str(FIX / "crio/run/containers/storage/overlay-containers/{id}/userdata"
                  "/config.json")
    info = OciBundleRuntime(CRIO, (pattern,)).inspect(CgroupMatch(CRIO, CRIO_ID))
    assert info is not None
    assert (info.runtime, info.name, info.image) == (CRIO, "api", "registry.local/api:2.0")
    assert info.image_digest == "sha256:" + \
        "5f0c9b3a6e2d1c4b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b"
    assert (info.pod_namespace, info.pod_name, info.pod_uid) == \
        ("billing", "api-5c8f7d-pq7ms", UID)


def test_bundle_host_root(tmp_path: Path) -> None:
    dest = tmp_path / "host/run/containers/storage/overlay-containers"
    shutil.copytree(FIX / "crio/run/containers/storage/overlay-containers", dest)
    rt = OciBundleRuntime(
        CRIO, ("/run/containers/storage/overlay-containers/{id}/userdata/config.json",),
        host_root=str(tmp_path / "host"))
    info = rt.inspect(CgroupMatch(CRIO, CRIO_ID))
    assert info is not None and info.name == "api"


# --------------------------------------------------------------------------- labels


def test_docker_labels() -> None:
    rt = DockerRuntime([DockerDaemon(str(FIX / "docker/data"), str(FIX / "docker/exec"))])
    info = rt.inspect(CgroupMatch(D, ID))
    assert info is not None
    assert info.labels == {"org.moray.test": "1"}  # the image's label, merged by docker
    assert info.pod_labels == {}


def test_docker_pod_labels_from_sandbox(tmp_path: Path) -> None:
    """dockershim / cri-dockerd: a container names its sandbox, whose labels are the pod's."""
    src = json.loads((FIX / "docker/data/containers" / ID / "config.v2.json").read_text())
    sandbox = "d" * 64
    for cid, labels in ((H, {"io.kubernetes.sandbox.id": sandbox, "app": "web"}),
                        (sandbox, {"io.kubernetes.docker.type": "podsandbox",
                                   "tier": "front"})):
        doc = json.loads(json.dumps(src))
        doc["Config"]["Labels"] = labels
        (tmp_path / "containers" / cid).mkdir(parents=True)
        (tmp_path / "containers" / cid / "config.v2.json").write_text(json.dumps(doc))
    rt = DockerRuntime([DockerDaemon(str(tmp_path), "/nonexistent")])
    info = rt.inspect(CgroupMatch(D, H))
    assert info is not None
    assert info.labels["app"] == "web"
    assert info.pod_labels == {"io.kubernetes.docker.type": "podsandbox", "tier": "front"}
    pod = rt.inspect(CgroupMatch(D, sandbox))
    assert pod is not None and pod.pod_labels == pod.labels


def test_runc_annotations_are_labels() -> None:
    rt = RuncRuntime([RuncRoot(str(FIX / "runc/run-runc"), Runtime.RUNC)])
    info = rt.inspect(CgroupMatch(Runtime.RUNC, "moray-fixture"))
    assert info is not None
    assert info.labels == {"org.opencontainers.image.ref.name": "moray-test/busybox:1"}
    # docker's runc state carries only the bundle: no labels from there
    rt = RuncRuntime([RuncRoot(str(FIX / "docker/exec/runtime-runc/*"), D)])
    info = rt.inspect(CgroupMatch(D, ID, namespace="moby"))
    assert info is not None and info.labels == {}


def test_crio_labels_and_pod_labels() -> None:
    pattern = str(FIX / "crio/run/containers/storage/overlay-containers/{id}/userdata"
                  "/config.json")
    rt = OciBundleRuntime(CRIO, (pattern,))
    info = rt.inspect(CgroupMatch(CRIO, CRIO_ID))
    assert info is not None
    assert info.labels == {"io.kubernetes.container.name": "api",
                           "io.kubernetes.pod.name": "api-5c8f7d-pq7ms",
                           "io.kubernetes.pod.namespace": "billing",
                           "io.kubernetes.pod.uid": UID}
    assert info.pod_labels["app"] == "api" and info.pod_labels["tier"] == "back"
    sandbox = rt.inspect(CgroupMatch(CRIO, SANDBOX_ID))
    assert sandbox is not None and sandbox.name == "POD"
    assert sandbox.pod_labels == sandbox.labels == info.pod_labels


def test_containerd_cri_has_no_labels_in_files() -> None:
    """containerd keeps CRI labels in its metadata database, not in the bundle."""
    info = _containerd().inspect(CgroupMatch(CD, CRI_ID, UID, BURST))
    assert info is not None and info.labels == {} and info.pod_labels == {}


def test_user_annotations_are_labels_runtime_ones_are_not() -> None:
    from moray.agent.enrich.runtimes import labels_from_annotations

    assert labels_from_annotations({
        "app": "web", "io.kubernetes.cri.container-type": "container",
        "io.container.manager": "libpod", "io.podman.annotations.init": "FALSE",
        "io.kubernetes.cri-o.Labels": '{"k": "v"}'}) == {"app": "web", "k": "v"}
    assert labels_from_annotations({"io.kubernetes.cri-o.Labels": "{broken"}) == {}


PODMAN_LABELS_ID = "1df36739e47b25109cace5075efa55f900e915458e85df14281cd75d066188cd"
PODMAN_MEMBER_ID = "bcd0b5a61017290c9661136d00914916b641232b28e0069d05275d77b4dd45b7"


def test_podman_labels_from_bolt_database() -> None:
    """Captured from podman 4.3: `podman create --label app=web --label tier=front` and a
    container in `podman pod create --label team=pay` (libpod/bolt_state.db)."""
    rt = PodmanRuntime(str(FIX / "podman-labels/storage"))
    info = rt.inspect(CgroupMatch(POD, PODMAN_LABELS_ID))
    assert info is not None and info.name == "moray-pod-labels"
    assert info.labels == {"app": "web", "tier": "front", "org.moray.test": "1"}
    assert info.pod_labels == {}
    member = rt.inspect(CgroupMatch(POD, PODMAN_MEMBER_ID))
    assert member is not None
    assert member.labels == {"app": "api", "org.moray.test": "1"}
    assert member.pod_labels == {"team": "pay"}


def test_podman_without_bolt_database_has_no_labels() -> None:
    info = PodmanRuntime(str(FIX / "podman/storage")).inspect(CgroupMatch(POD, PODMAN_ID))
    assert info is not None and info.labels == {}


def test_podman_damaged_bolt_database_is_retried(tmp_path: Path) -> None:
    shutil.copytree(FIX / "podman-labels/storage", tmp_path / "s")
    db = tmp_path / "s/libpod/bolt_state.db"
    good = db.read_bytes()
    db.write_bytes(good[:4096 * 3])  # truncated mid-write: pages missing
    rt = PodmanRuntime(str(tmp_path / "s"))
    assert rt.inspect(CgroupMatch(POD, PODMAN_LABELS_ID)) is None
    db.write_bytes(good)
    os.utime(db, ns=(1, 1))  # a new mtime: re-read
    info = rt.inspect(CgroupMatch(POD, PODMAN_LABELS_ID))
    assert info is not None and info.labels["app"] == "web"
