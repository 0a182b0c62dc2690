"""Start REAL containers for integration tests (root only).

Three helpers, each usable on its own:

* :func:`build_rootfs` -- a ~2 MB busybox rootfs (busybox-static) with applet symlinks,
  /etc/passwd and an /etc/shadow holding :data:`SHADOW_MARKER`.
* :func:`run_runc` -- a plain runc container (no engine).  The container is *created* and
  held before its first instruction (an OCI ``createRuntime`` hook waits for a gate
  file), so a test learns its pid / cgroup id first and can install policy for it, then
  calls :meth:`RuncContainer.start` (or passes ``start=True``).
* :class:`Dockerd` -- a private dockerd (own data-root, exec-root, socket) with a locally
  built ``docker save`` image loaded as :data:`DOCKER_IMAGE`.

Everything is removed on exit, also when the test fails.  Debian packages needed:
runc, busybox-static, docker.io (for :class:`Dockerd`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")
BUSYBOX = Path("/bin/busybox")
SHADOW_MARKER = "moray-shadow-marker"
DOCKER_IMAGE = "moray-test/busybox:1"
# dockerd 20.10 from docker.io; another `docker` (e.g. /usr/local/bin) may be a newer CLI.
DOCKER_CLI = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
APPLETS = (
    "sh", "cat", "ls", "nc", "wget", "sleep", "true", "false", "echo", "id", "ps", "head",
    "touch", "rm", "cp", "mkdir", "chmod", "env", "ip", "ifconfig", "ping", "grep", "kill",
    "hostname", "mount", "umount", "unshare", "nsenter", "stat", "readlink", "test", "[",
)


# A container script's last line: wait (up to 30 s) until the test touches <rootfs>/tmp/go,
# so the container is still there while the test looks at what the agent did.
WAIT_GO = ("i=0; while [ ! -e /tmp/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
           "echo end")


# --------------------------------------------------------------------------- rootfs


def build_rootfs(dest: Path) -> Path:
    """Write a busybox rootfs into *dest* (created) and return it."""
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in APPLETS:
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "tmp").chmod(0o1777)
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    shadow = dest / "etc" / "shadow"
    shadow.write_text(f"root:*:19000:0:99999:7:::\n{SHADOW_MARKER}:*:19000::::::\n")
    shadow.chmod(0o640)
    return dest


def cgroup_of(pid: int) -> tuple[str, int]:
    """(cgroup v2 path, cgroup id = inode of its directory) of a live process."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            path = line[3:]
            return path, os.stat(CGROUP2_ROOT / path.lstrip("/")).st_ino
    raise LookupError(f"pid {pid} has no cgroup v2 line")


def _wait_for(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not callable(check) or not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- runc


@dataclass
class RunResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class RuncContainer:
    """A runc container held (created, not started) until :meth:`start`."""

    id: str
    bundle: Path
    pid: int
    cgroup_path: str
    cgroup_id: int
    state_root: Path | None
    _proc: subprocess.Popen[bytes] = field(repr=False)
    _gate: Path = field(repr=False)
    _out: Path = field(repr=False)
    _err: Path = field(repr=False)

    def start(self) -> None:
        """Let the container run its process (opens the createRuntime gate)."""
        self._gate.touch()

    def wait(self, timeout: float = 30) -> RunResult:
        """Start if needed, wait for exit: status is 128+signal when killed (137 = SIGKILL)."""
        self.start()
        code = self._proc.wait(timeout)
        return RunResult(code, self._out.read_text(errors="replace"),
                         self._err.read_text(errors="replace"))

    def runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        root = ["--root", str(self.state_root)] if self.state_root else []
        return subprocess.run(["runc", *root, *args], capture_output=True, text=True,
                              check=False, timeout=30)


@contextlib.contextmanager
def run_runc(
    container_id: str,
    argv: Sequence[str],
    *,
    rootfs: Path | None = None,
    network: str = "none",
    cgroups_path: str | None = None,
    state_root: Path | None = None,
    env: Sequence[str] = ("PATH=/bin",),
    annotations: dict[str, str] | None = None,
    start: bool = False,
    timeout: float = 20,
    mounts: Sequence[dict[str, object]] = (),
    caps: Sequence[str] = (),
    user: tuple[int, int] | None = None,
    drop_caps: bool = False,
) -> Iterator[RuncContainer]:
    """Create a runc container running *argv*; always ``runc delete -f`` on exit.

    network: ``"none"`` (new netns with only lo), ``"host"`` (share the host's) or a
    netns path such as ``/run/netns/x``.  cgroups_path: OCI ``linux.cgroupsPath``; unset
    means runc uses ``<caller's cgroup>/<id>``.  state_root: runc ``--root`` (default
    /run/runc).  A fresh busybox rootfs is built when *rootfs* is not given.  mounts:
    extra OCI mounts (e.g. a read-only bind of the host's /usr). caps: capabilities added
    to runc's default set (e.g. ``CAP_SETFCAP``). user: (uid, gid) of the process (default
    root). drop_caps: no capabilities at all (every set empty).
    """
    work = Path(tempfile.mkdtemp(prefix=f"moray-runc-{container_id}-"))
    bundle = work / "bundle"
    bundle.mkdir()
    try:
        if rootfs is None:
            rootfs = build_rootfs(work / "rootfs")
        gate, state_file = work / "gate", work / "state.json"
        hook = f"cat > {state_file}; while [ ! -e {gate} ]; do sleep 0.01; done"
        config = _runc_config(bundle, rootfs, argv, env=env, network=network,
                              cgroups_path=cgroups_path, annotations=annotations, hook=hook,
                              mounts=mounts, caps=caps, user=user, drop_caps=drop_caps)
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        out, err = work / "stdout", work / "stderr"
        root = ["--root", str(state_root)] if state_root else []
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(["runc", *root, "run", "--bundle", str(bundle), container_id],
                                    stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        try:
            _wait_for("runc createRuntime hook",
                      lambda: (state_file.exists() and state_file.stat().st_size > 0)
                      or proc.poll() is not None, timeout)
            if proc.poll() is not None:
                raise RuntimeError(f"runc run exited {proc.returncode}: {err.read_text()}")
            _wait_for("hook state", lambda: _json_ok(state_file), timeout)
            pid = int(json.loads(state_file.read_text())["pid"])
            cg_path, cg_id = cgroup_of(pid)
            ctr = RuncContainer(container_id, bundle, pid, cg_path, cg_id, state_root,
                                proc, gate, out, err)
            if start:
                ctr.start()
            yield ctr
        finally:
            gate.touch()
            subprocess.run(["runc", *root, "delete", "-f", container_id], capture_output=True,
                           check=False, timeout=30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _json_ok(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def _runc_config(bundle: Path, rootfs: Path, argv: Sequence[str], *, env: Sequence[str],
                 network: str, cgroups_path: str | None,
                 annotations: dict[str, str] | None, hook: str,
                 mounts: Sequence[dict[str, object]] = (),
                 caps: Sequence[str] = (), user: tuple[int, int] | None = None,
                 drop_caps: bool = False) -> dict[str, object]:
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=list(argv), env=list(env))
    for kind, have in config["process"].get("capabilities", {}).items():
        config["process"]["capabilities"][kind] = [] if drop_caps else [
            *have, *(c for c in caps if c not in have)]
    if user is not None:
        config["process"]["user"] = {"uid": user[0], "gid": user[1]}
    config["root"] = {"path": str(rootfs), "readonly": False}
    linux = config["linux"]
    namespaces = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    if network == "none":
        namespaces.append({"type": "network"})
    elif network != "host":
        namespaces.append({"type": "network", "path": network})
    linux["namespaces"] = namespaces
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
    if annotations:
        config["annotations"] = dict(annotations)
    config["mounts"] = [*config["mounts"], *mounts]
    config["hooks"] = {"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", hook], "timeout": 60}]}
    return config


# --------------------------------------------------------------------------- docker


def docker_save_tarball(rootfs: Path, dest: Path, tag: str = DOCKER_IMAGE) -> str:
    """Write *rootfs* as a one-layer ``docker save`` archive; return the image id."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isreg():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"org.moray.test": "1"}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "moray tests"}],
    }, sort_keys=True).encode()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag],
                 "Layers": [f"{diff_id}/layer.tar"]}]
    with tarfile.open(dest, "w") as tar:
        for name, data in ((f"{diff_id}/layer.tar", layer_bytes),
                           (f"{image_id}.json", config),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"sha256:{image_id}"


@dataclass
class DockerContainer:
    id: str
    name: str
    pid: int
    cgroup_path: str
    cgroup_id: int


class Dockerd:
    """A private dockerd: ``with Dockerd() as d: c = d.run("sleep", "30")``.

    Uses its own data-root / exec-root / socket under a temp dir, no iptables, no
    bridge (containers get ``--network none``), and the managed containerd that dockerd
    starts itself.  ``image_id`` is the id of :data:`DOCKER_IMAGE` once loaded.
    """

    def __init__(self, workdir: Path | None = None, timeout: float = 60) -> None:
        self.work = workdir or Path(tempfile.mkdtemp(prefix="moray-dockerd-"))
        self.data_root = self.work / "data"
        self.exec_root = self.work / "exec"
        self.sock = self.work / "docker.sock"
        self.timeout = timeout
        self.image_id = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Dockerd:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "cli").mkdir(exist_ok=True)  # empty DOCKER_CONFIG: no user config
        log = (self.work / "dockerd.log").open("wb")
        self._proc = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
             "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
             "--pidfile", str(self.work / "docker.pid"), "-H", f"unix://{self.sock}",
             "--config-file", str(self._daemon_json())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        try:
            _wait_for("dockerd", self._ready, self.timeout)
            rootfs = build_rootfs(self.work / "rootfs")
            tarball = self.work / "image.tar"
            self.image_id = docker_save_tarball(rootfs, tarball)
            self.docker("load", "-i", str(tarball))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _daemon_json(self) -> Path:
        path = self.work / "daemon.json"
        path.write_text(json.dumps({"log-driver": "json-file"}))
        return path

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"dockerd exited: {(self.work / 'dockerd.log').read_text()}")
        return self.sock.exists() and self.docker("version", check=False).returncode == 0

    def docker(self, *args: str, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "DOCKER_CONFIG": str(self.work / "cli")}
        res = subprocess.run([DOCKER_CLI, "-H", f"unix://{self.sock}", *args],
                             capture_output=True, text=True, env=env, timeout=timeout,
                             check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {res.returncode} {res.stderr}")
        return res

    def run(self, *argv: str, name: str | None = None,
            extra: Sequence[str] = ()) -> DockerContainer:
        """``docker run -d --network none IMAGE argv`` and return its identity."""
        opts = ["--name", name] if name else []
        cid = self.docker("run", "-d", "--network", "none", *opts, *extra,
                          DOCKER_IMAGE, *argv).stdout.strip()
        info = json.loads(self.docker("inspect", cid).stdout)[0]
        pid = int(info["State"]["Pid"])
        cg_path, cg_id = cgroup_of(pid)
        return DockerContainer(cid, info["Name"].lstrip("/"), pid, cg_path, cg_id)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq", check=False, timeout=20).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        _unmount_under(self.work)
        shutil.rmtree(self.work, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever dockerd/containerd left mounted below *root*."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
