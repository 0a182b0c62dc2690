"""A Kubernetes pod spec (the rendered chart's DaemonSet, say) as ``docker run`` arguments,
so a test runs the manifest's own container on a private dockerd without a cluster.

    pod = one(render(values), "DaemonSet")["spec"]["template"]["spec"]
    run = translate(pod, "agent", image=AGENT_IMAGE, workdir=tmp,
                    secrets={"moray-agent-enrollment": {"token": t, "ca.pem": ca}})
    run.prepare()                         # secret files written, DirectoryOrCreate made
    subprocess.run(run.argv(docker=[DOCKER, "-H", sock]), env=run.environ, check=True)
    pid = ...                             # the container's pid (docker inspect)
    poll(run.probes["readiness"].command(pid))     # exit 0 = the probe passes

What is translated, as the kubelet would do it on the node:

- image, command, args: ``--entrypoint command[0]`` IMAGE command[1:] args, with
  ``$(VAR)`` expanded from the container's env (``$$`` = ``$``);
- env (value; fieldRef spec.nodeName, metadata.name/namespace, spec.serviceAccountName;
  secretKeyRef, configMapKeyRef): ``-e NAME`` only, the values in
  :attr:`DockerRun.environ`, the environment to run the docker CLI with (secrets stay off
  every command line);
- securityContext (the pod's, then the container's): privileged (see
  :func:`privileged_options`), capabilities, runAsUser/Group, fsGroup and
  supplementalGroups, readOnlyRootFilesystem, allowPrivilegeEscalation, seccompProfile:
  ``--privileged``, ``--cap-add/--cap-drop``, ``--user``, ``--group-add``, ``--read-only``,
  ``--security-opt no-new-privileges``, ``seccomp=unconfined``;
- hostPID, hostNetwork, hostIPC: ``--pid host``, ``--network host``, ``--ipc host`` (else
  ``--network`` *pod_network*: its own namespace, loopback only on a dockerd without a
  bridge);
- hostPath volumes: bind mounts of the same host path (``host_path`` may move them for a
  test), readonly, propagation Bidirectional = rshared, HostToContainer = rslave;
  ``DirectoryOrCreate`` made by :meth:`DockerRun.prepare`;
- emptyDir: tmpfs (``sizeLimit`` its size);
- secret and configMap volumes (items, defaultMode): files written under *workdir* by
  :meth:`DockerRun.prepare`, bound read-only;
- resources (limits memory and cpu, requests cpu): ``--memory``, ``--cpus``,
  ``--cpu-shares``;
- terminationGracePeriodSeconds: ``--stop-timeout`` (``docker stop``: SIGTERM, then
  SIGKILL);
- startup, liveness and readiness probes (httpGet, tcpSocket, exec): :class:`Probe`, a
  command run on the host that exits 0 when the probe passes: HTTP and TCP from inside
  the pod's network namespace (``nsenter -n``) to 127.0.0.1, where the kubelet would use
  the pod's IP; exec through ``docker exec``.

Ignored, having no meaning on one docker host: scheduling (tolerations, nodeSelector,
affinity, priorityClassName), the service account (no API here), image pull settings,
``ports`` (reached through the pod's network namespace). Anything else raises
:class:`Unsupported`, so a chart change this module cannot honour fails the test instead
of being dropped silently. Not emulated: fsGroup's ownership change of volumes.

The chart's image is the one `make images` builds (:data:`IMAGE_DEFAULT`,
tests/helpers/images.py); a test may pass ``image=`` (and ``command=``) to run something
else under the same spec.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the chart's default agent image (packaging/helm/moray values.yaml) without its tag: the
# name `make images` gives the agent image (packaging/images/build)
IMAGE_DEFAULT = "registry.local/moray/agent"

PROPAGATION = {None: None, "None": None, "HostToContainer": "rslave", "Bidirectional": "rshared"}
FIELD_REFS = ("spec.nodeName", "metadata.name", "metadata.namespace", "spec.serviceAccountName")
_POD_IGNORED = {"tolerations", "nodeSelector", "affinity", "priorityClassName", "imagePullSecrets",
                "serviceAccountName", "serviceAccount", "automountServiceAccountToken",
                "dnsPolicy", "restartPolicy", "schedulerName"}
_POD_KNOWN = {"containers", "initContainers", "volumes", "hostPID", "hostNetwork", "hostIPC",
              "securityContext", "terminationGracePeriodSeconds"} | _POD_IGNORED
_CONTAINER_IGNORED = {"imagePullPolicy", "ports", "terminationMessagePath",
                      "terminationMessagePolicy"}
_CONTAINER_KNOWN = {"name", "image", "command", "args", "env", "securityContext", "resources",
                    "volumeMounts", "workingDir", "startupProbe", "livenessProbe",
                    "readinessProbe"} | _CONTAINER_IGNORED
_SECURITY_KNOWN = {"privileged", "capabilities", "runAsUser", "runAsGroup", "runAsNonRoot",
                   "readOnlyRootFilesystem", "allowPrivilegeEscalation", "seccompProfile",
                   "fsGroup", "fsGroupChangePolicy", "supplementalGroups"}
_PROBE_TIMING = {"periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3,
                 "successThreshold": 1, "initialDelaySeconds": 0}
_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# capability numbers (linux/capability.h) -> names docker knows
CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
        "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
        "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
        "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
        "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
        "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
        "PERFMON", "BPF", "CHECKPOINT_RESTORE")


def privileged_options(status: str = "/proc/self/status") -> list[str]:
    """How to run a ``privileged: true`` container from this process: ``--privileged``, or,
    where this process's bounding set lacks capabilities (a sandboxed CI: runc cannot grant
    what it does not hold, and ``--privileged`` fails with "unable to apply caps"), every
    capability it holds, unconfined seccomp, AppArmor and /proc paths instead. Devices and
    a writable /sys are then not the container's (the agent's bind mounts of /sys/fs/bpf
    and /sys/kernel are)."""
    bounding = 0
    for line in Path(status).read_text().splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
    missing = [name for bit, name in enumerate(CAPS) if not bounding >> bit & 1]
    if not missing:
        return ["--privileged"]
    return ["--cap-add=ALL", *(f"--cap-drop={c}" for c in missing),
            "--security-opt=seccomp=unconfined", "--security-opt=apparmor=unconfined",
            "--security-opt=systempaths=unconfined"]


class Unsupported(ValueError):
    """The pod spec uses something this translation does not do (named in the message)."""


class Missing(LookupError):
    """A Secret or ConfigMap (or a key of it) the pod needs was not given."""


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (``512Mi``, ``100m``, ``2``) as a number."""
    m = _QUANTITY.match(str(text))
    if not m:
        raise Unsupported(f"quantity {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values: a defined VAR is
    replaced, an undefined one left as written, ``$$`` is ``$``."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


_CHECK = """
import socket, ssl, sys, urllib.request
kind, host, port, path, scheme, timeout = sys.argv[1:7]
try:
    if kind == "tcp":
        socket.create_connection((host, int(port)), float(timeout)).close()
        sys.exit(0)
    ctx = ssl._create_unverified_context()   # the kubelet does not verify either
    url = f"{scheme.lower()}://{host}:{port}{path}"
    with urllib.request.urlopen(url, timeout=float(timeout), context=ctx) as r:
        sys.exit(0 if 200 <= r.status < 400 else 1)
except Exception as err:
    print(f"{kind} {host}:{port}{path}: {err}", file=sys.stderr)
    sys.exit(1)
"""


@dataclass(frozen=True)
class Probe:
    """One probe of the container; :meth:`command` is what to run (and poll) on the host."""

    kind: str                   # http | tcp | exec
    port: int | None = None
    path: str = "/"
    scheme: str = "HTTP"
    exec_command: tuple[str, ...] = ()
    period: float = 10
    timeout: float = 1
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay: float = 0

    @property
    def budget(self) -> float:
        """Seconds the kubelet gives it before acting: delay + period x failures."""
        return self.initial_delay + self.period * self.failure_threshold

    def command(self, pid: int, *, container: str = "", docker: Sequence[str] = ("docker",),
                host: str = "127.0.0.1", python: str = sys.executable) -> list[str]:
        """Run on the host: exit status 0 when the probe passes. HTTP and TCP probes run in
        the network namespace of the container's process ``pid``; exec probes through
        ``docker exec container``."""
        if self.kind == "exec":
            return [*docker, "exec", container, *self.exec_command]
        return ["nsenter", "-t", str(pid), "-n", python, "-c", _CHECK, self.kind, host,
                str(self.port), self.path, self.scheme, str(self.timeout)]


@dataclass
class DockerRun:
    """``docker run`` for one container of the pod (see the module's table)."""

    name: str
    image: str
    options: list[str]
    args: list[str]
    environ: dict[str, str]
    files: dict[Path, tuple[bytes, int]] = field(default_factory=dict)
    host_dirs: list[Path] = field(default_factory=list)
    probes: dict[str, Probe] = field(default_factory=dict)
    stop_timeout: int = 30

    def argv(self, *, docker: Sequence[str] = ("docker",), detach: bool = True) -> list[str]:
        return [*docker, "run", *(["-d"] if detach else []), *self.options, self.image,
                *self.args]

    def prepare(self) -> None:
        """Write the secret and configMap files, make the DirectoryOrCreate host paths."""
        for path, (data, mode) in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        for d in self.host_dirs:
            d.mkdir(parents=True, exist_ok=True)

    def shell(self, *, docker: Sequence[str] = ("docker",)) -> str:
        """The command line, for a test's log (values of -e NAME are not in it)."""
        return shlex.join(self.argv(docker=docker))


def _check_keys(where: str, obj: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise Unsupported(f"{where}: {', '.join(unknown)}")


def _security(pod_sc: Mapping[str, Any], sc: Mapping[str, Any],
              privileged: Sequence[str]) -> list[str]:
    _check_keys("pod securityContext", pod_sc, _SECURITY_KNOWN)
    _check_keys("securityContext", sc, _SECURITY_KNOWN)
    merged = {**pod_sc, **sc}
    opts: list[str] = []
    if merged.get("privileged"):
        opts += privileged
    caps = merged.get("capabilities") or {}
    _check_keys("capabilities", caps, {"add", "drop"})
    opts += [f"--cap-add={c}" for c in caps.get("add", [])]
    opts += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    if "runAsUser" in merged:
        group = merged.get("runAsGroup")
        opts.append(f"--user={merged['runAsUser']}" + (f":{group}" if group is not None else ""))
    elif merged.get("runAsNonRoot"):
        raise Unsupported("runAsNonRoot without runAsUser (docker cannot check the image's user)")
    if merged.get("runAsNonRoot") and merged.get("runAsUser") == 0:
        raise Unsupported("runAsNonRoot with runAsUser 0: the kubelet would refuse the pod")
    for gid in ([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else []) + \
            list(pod_sc.get("supplementalGroups", [])):
        opts.append(f"--group-add={gid}")
    if merged.get("readOnlyRootFilesystem"):
        opts.append("--read-only")
    if merged.get("allowPrivilegeEscalation") is False:
        opts.append("--security-opt=no-new-privileges")
    seccomp = (merged.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        opts.append("--security-opt=seccomp=unconfined")
    elif seccomp not in (None, "RuntimeDefault"):
        raise Unsupported(f"seccompProfile {seccomp}")
    return opts


def _probe(spec: Mapping[str, Any], ports: Mapping[str, int]) -> Probe:
    timing = {k: spec.get(k, v) for k, v in _PROBE_TIMING.items()}
    _check_keys("probe", spec, set(_PROBE_TIMING) | {"httpGet", "tcpSocket", "exec"})
    common = {"period": timing["periodSeconds"], "timeout": timing["timeoutSeconds"],
              "failure_threshold": timing["failureThreshold"],
              "success_threshold": timing["successThreshold"],
              "initial_delay": timing["initialDelaySeconds"]}

    def port(value: int | str) -> int:
        if isinstance(value, int):
            return value
        if value not in ports:
            raise Unsupported(f"probe port {value!r}: no container port of that name")
        return ports[value]

    if "httpGet" in spec:
        get = spec["httpGet"]
        _check_keys("httpGet", get, {"path", "port", "scheme"})
        return Probe("http", port(get["port"]), get.get("path", "/"), get.get("scheme", "HTTP"),
                     **common)
    if "tcpSocket" in spec:
        _check_keys("tcpSocket", spec["tcpSocket"], {"port"})
        return Probe("tcp", port(spec["tcpSocket"]["port"]), **common)
    return Probe("exec", exec_command=tuple(spec["exec"]["command"]), **common)


def _object_files(kind: str, volume: Mapping[str, Any], objects: Mapping[str, Mapping[str, Any]],
                  name: str, dest: Path) -> dict[Path, tuple[bytes, int]]:
    data = objects.get(name)
    if data is None:
        if volume.get("optional"):
            return {}
        raise Missing(f"{kind} {name!r} (volume)")
    mode = int(volume.get("defaultMode", 0o644))
    items = volume.get("items") or [{"key": k, "path": k} for k in data]
    files: dict[Path, tuple[bytes, int]] = {}
    for item in items:
        if item["key"] not in data:
            raise Missing(f"{kind} {name!r}: key {item['key']!r}")
        value = data[item["key"]]
        files[dest / item["path"]] = (value.encode() if isinstance(value, str) else value,
                                      int(item.get("mode", mode)))
    return files


def _environment(spec: Mapping[str, Any], field_refs: Mapping[str, str],
                 secrets: Mapping[str, Mapping[str, str | bytes]],
                 config_maps: Mapping[str, Mapping[str, str | bytes]]) -> dict[str, str]:
    """The container's environment, in order (a value may refer to the ones before it)."""
    env: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
            continue
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in FIELD_REFS:
                raise Unsupported(f"env {item['name']}: fieldRef {path}")
            env[item["name"]] = field_refs[path]
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secretKeyRef" if "secretKeyRef" in source else "configMapKeyRef"
            ref = source[kind]
            objects = secrets if kind == "secretKeyRef" else config_maps
            value = objects.get(ref["name"], {}).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise Missing(f"env {item['name']}: {kind} {ref['name']}/{ref['key']}")
            env[item["name"]] = value.decode() if isinstance(value, bytes) else value
        else:
            raise Unsupported(f"env {item['name']}: {sorted(source)}")
    return env


def _resources(resources: Mapping[str, Any]) -> list[str]:
    opts: list[str] = []
    _check_keys("resources", resources, {"limits", "requests"})
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    _check_keys("resources.limits", limits, {"cpu", "memory"})
    if "memory" in limits:
        opts.append(f"--memory={int(quantity(limits['memory']))}")
    if "cpu" in limits:
        opts.append(f"--cpus={quantity(limits['cpu']):g}")
    if "cpu" in requests:   # the kubelet's shares: 1024 per CPU, at least 2
        opts.append(f"--cpu-shares={max(2, int(quantity(requests['cpu']) * 1024))}")
    return opts


def _volumes(pod: Mapping[str, Any], spec: Mapping[str, Any], name: str, workdir: Path,
             secrets: Mapping[str, Mapping[str, str | bytes]],
             config_maps: Mapping[str, Mapping[str, str | bytes]],
             host_path: Callable[[str], str]
             ) -> tuple[list[str], dict[Path, tuple[bytes, int]], list[Path]]:
    """``--mount`` options, the files of secret and configMap volumes, the host dirs to make."""
    opts: list[str] = []
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[Path, tuple[bytes, int]] = {}
    host_dirs: list[Path] = []
    for mount in spec.get("volumeMounts", []):
        _check_keys("volumeMount", mount, {"name", "mountPath", "readOnly", "mountPropagation",
                                           "subPath"})
        volume = volumes.get(mount["name"])
        if volume is None:
            raise Unsupported(f"volumeMount {mount['name']}: no such volume in the pod")
        source_kinds = set(volume) - {"name"}
        target = mount["mountPath"]
        readonly = bool(mount.get("readOnly"))
        if mount.get("mountPropagation") not in PROPAGATION:
            raise Unsupported(f"mountPropagation {mount['mountPropagation']}")
        propagation = PROPAGATION[mount.get("mountPropagation")]
        if source_kinds == {"hostPath"}:
            hp = volume["hostPath"]
            _check_keys("hostPath", hp, {"path", "type"})
            src = host_path(hp["path"])
            if hp.get("type") == "DirectoryOrCreate":
                host_dirs.append(Path(src))
            elif hp.get("type") not in (None, "", "Directory"):
                raise Unsupported(f"hostPath type {hp['type']}")
        elif source_kinds == {"emptyDir"}:
            if propagation or mount.get("subPath"):
                raise Unsupported(f"emptyDir {mount['name']} with propagation or subPath")
            size = (volume["emptyDir"] or {}).get("sizeLimit")
            opts.append(f"--mount=type=tmpfs,destination={target}" +
                        (f",tmpfs-size={int(quantity(size))}" if size else ""))
            continue
        elif source_kinds in ({"secret"}, {"configMap"}):
            kind = source_kinds.pop()
            vol = volume[kind]
            obj_name = vol["secretName"] if kind == "secret" else vol["name"]
            dest = workdir / f"{name}-{mount['name']}"
            files.update(_object_files(kind, vol, secrets if kind == "secret" else config_maps,
                                       obj_name, dest))
            host_dirs.append(dest)
            src, readonly = str(dest), True
        else:
            raise Unsupported(f"volume {mount['name']}: {sorted(source_kinds)}")
        if mount.get("subPath"):
            src = str(Path(src) / mount["subPath"])
        opts.append(f"--mount=type=bind,source={src},destination={target}"
                    + (",readonly" if readonly else "")
                    + (f",bind-propagation={propagation}" if propagation else ""))
    return opts, files, host_dirs


def translate(pod: Mapping[str, Any], container: str, *, workdir: Path,
              image: str | None = None, command: Sequence[str] | None = None,
              init: bool = False, node_name: str = "node-1", pod_name: str = "moray-agent-test",
              namespace: str = "moray-system",
              secrets: Mapping[str, Mapping[str, str | bytes]] | None = None,
              config_maps: Mapping[str, Mapping[str, str | bytes]] | None = None,
              host_path: Callable[[str], str] = lambda p: p,
              pod_network: str = "none",
              privileged: Sequence[str] = ("--privileged",)) -> DockerRun:
    """``docker run`` for the (init) container named ``container`` of the pod spec ``pod``.

    ``image`` replaces the spec's (see :data:`IMAGE_DEFAULT`), ``command`` its
    command (the args stay). ``workdir`` holds the files of secret and configMap volumes.
    ``host_path`` maps each hostPath to the path bound (a test may move them);
    ``privileged`` is what ``privileged: true`` becomes (:func:`privileged_options` for
    this host)."""
    _check_keys("pod spec", pod, _POD_KNOWN)
    listed = pod.get("initContainers" if init else "containers") or []
    spec = next((c for c in listed if c["name"] == container), None)
    if spec is None:
        raise LookupError(f"no {'init ' if init else ''}container {container!r} in the pod")
    _check_keys(f"container {container}", spec, _CONTAINER_KNOWN)
    secrets, config_maps = secrets or {}, config_maps or {}
    name = f"{pod_name}-{container}"
    field_refs = {"spec.nodeName": node_name, "metadata.name": pod_name,
                  "metadata.namespace": namespace,
                  "spec.serviceAccountName": pod.get("serviceAccountName", "default")}

    env = _environment(spec, field_refs, secrets, config_maps)
    opts = ["--name", name, "--restart=no"]
    opts += [f"--env={k}" for k in env]
    if pod.get("hostPID"):
        opts.append("--pid=host")
    if pod.get("hostIPC"):
        opts.append("--ipc=host")
    if pod.get("hostNetwork"):
        opts.append("--network=host")
    else:
        opts += [f"--network={pod_network}", f"--hostname={pod_name}"]
    opts += _security(pod.get("securityContext") or {}, spec.get("securityContext") or {},
                      privileged)
    if "workingDir" in spec:
        opts.append(f"--workdir={spec['workingDir']}")

    opts += _resources(spec.get("resources") or {})
    grace = int(pod.get("terminationGracePeriodSeconds", 30))
    opts.append(f"--stop-timeout={grace}")

    mounts, files, host_dirs = _volumes(pod, spec, name, workdir, secrets, config_maps,
                                        host_path)
    opts += mounts
    cmd = list(command) if command is not None else list(spec.get("command") or [])
    args = [expand(a, env) for a in spec.get("args") or []]
    cmd = [expand(c, env) for c in cmd]
    if cmd:
        opts.append(f"--entrypoint={cmd[0]}")
    ports = {p["name"]: int(p["containerPort"]) for p in spec.get("ports", []) if "name" in p}
    probes = {kind.removesuffix("Probe"): _probe(spec[kind], ports)
              for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in spec}
    return DockerRun(name=name, image=image or spec["image"], options=opts,
                     args=cmd[1:] + args, environ=env, files=files, host_dirs=host_dirs,
                     probes=probes, stop_timeout=grace)


def translate_pod(pod: Mapping[str, Any], **kw: Any) -> tuple[list[DockerRun], list[DockerRun]]:
    """Every init container (to run in order, each to completion) and every container."""
    inits = [translate(pod, c["name"], init=True, **kw) for c in pod.get("initContainers", [])]
    mains = [translate(pod, c["name"], **kw) for c in pod["containers"]]
    return inits, mains
