"""The runtime policy model: what one validated policy document says (docs/policy.md).

Plain frozen records, built only by api/policy/load.py from a document that passed
validation; compile.py turns a set of them into map rows. Nothing here touches the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

API_VERSION = "moray/v1"
KIND = "RuntimePolicy"


class Mode(StrEnum):
    ENFORCE = "enforce"   # the kernel blocks / kills
    MONITOR = "monitor"   # same matching, nothing blocked: events say "would-block"


class AgentDown(StrEnum):
    """What a new container gets while the agent is down (docs/policy.md)."""

    OPEN = "open"      # runs uncovered until the agent is back (reported then)
    CLOSED = "closed"  # first exec held up to agentDownHold, then refused


DEFAULT_AGENT_DOWN_HOLD = 30  # seconds
MAX_AGENT_DOWN_HOLD = 3600


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    ANY = "any"


class Protocol(StrEnum):
    ANY = "any"
    TCP = "tcp"
    UDP = "udp"


PROTO_NUMBER = {Protocol.ANY: 0, Protocol.TCP: 6, Protocol.UDP: 17}


@dataclass(frozen=True, slots=True)
class PathPattern:
    """An absolute path (exact) or a prefix (written with a trailing `*` or `/**`)."""

    text: str      # as written in the document
    path: str      # the path, or the prefix without its wildcard
    exact: bool

    def matches(self, candidate: str) -> bool:
        return candidate == self.path if self.exact else candidate.startswith(self.path)


@dataclass(frozen=True, slots=True)
class ContainerSelector:
    """All given criteria must hold; within one criterion any listed value may match.
    An empty selector selects every container."""

    images: tuple[str, ...] = ()       # globs on the image reference (or its digest)
    names: tuple[str, ...] = ()        # globs on the container name
    labels: tuple[tuple[str, str], ...] = ()
    namespaces: tuple[str, ...] = ()   # Kubernetes namespaces (globs)
    pod_labels: tuple[tuple[str, str], ...] = ()
    runtimes: tuple[str, ...] = ()     # docker, containerd, cri-o, podman, runc


@dataclass(frozen=True, slots=True)
class Scope:
    host: bool = False
    containers: ContainerSelector | None = None


@dataclass(frozen=True, slots=True)
class ExecRules:
    deny: tuple[PathPattern, ...] = ()
    allow: tuple[PathPattern, ...] | None = None   # None: no allow-list
    drift: bool = False

    @property
    def used(self) -> bool:
        return bool(self.deny) or self.allow is not None or self.drift


@dataclass(frozen=True, slots=True)
class FileRule:
    pattern: PathPattern
    access: Access

    def covers(self, names: Sequence[str], acc: int) -> bool:
        """Any of *names* under the pattern, for an access *acc* (bit 1 read, bit 2 write)."""
        return any(self.pattern.matches(n) for n in names) and (
            self.access is Access.ANY or (self.access is Access.READ and bool(acc & 1))
            or (self.access is Access.WRITE and bool(acc & 2)))

    @staticmethod
    def strongest(rules: Sequence[FileRule], names: Sequence[str],
                  acc: int) -> FileRule | None:
        """Of *rules* covering *names* for *acc*, the most specific (longest path)."""
        hits = [r for r in rules if r.covers(names, acc)]
        return max(hits, key=lambda r: len(r.pattern.path)) if hits else None


@dataclass(frozen=True, slots=True)
class FileRules:
    deny: tuple[FileRule, ...] = ()
    monitor: tuple[FileRule, ...] = ()

    @property
    def used(self) -> bool:
        return bool(self.deny or self.monitor)


@dataclass(frozen=True, slots=True)
class NetRule:
    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port_lo: int = 0
    port_hi: int = 65535
    protocol: Protocol = Protocol.ANY

    def matches(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                proto: int) -> bool:
        p = PROTO_NUMBER[self.protocol]
        return (addr.version == self.network.version and addr in self.network
                and self.port_lo <= port <= self.port_hi and p in (0, proto))


@dataclass(frozen=True, slots=True)
class NetRules:
    deny: tuple[NetRule, ...] = ()
    allow: tuple[NetRule, ...] | None = None

    @property
    def used(self) -> bool:
        return bool(self.deny) or self.allow is not None


@dataclass(frozen=True, slots=True)
class SyscallRules:
    deny: tuple[str, ...] = ()

    @property
    def used(self) -> bool:
        return bool(self.deny)


# --- issue 13: namespace and setid rule kinds (bpf/progs/enforce_args.bpf.c) ---

# namespace types a policy may name, in the kernel's index order (bpf/maps/policy.h MR_NS_*)
NAMESPACES = ("user", "mount", "net", "pid", "ipc", "uts", "cgroup", "time")
CLONE_FLAGS = {"user": 0x10000000, "mount": 0x00020000, "net": 0x40000000,
               "pid": 0x20000000, "ipc": 0x08000000, "uts": 0x04000000,
               "cgroup": 0x02000000, "time": 0x00000080}
# what a setid rule may deny, in the kernel's index order (MR_SETID_*)
SETID_KINDS = ("setuid", "setgid", "caps")


@dataclass(frozen=True, slots=True)
class NamespaceRules:
    """Namespace types whose creation (unshare, clone, clone3) or entry (setns) is denied."""

    deny: tuple[str, ...] = ()   # names from NAMESPACES, sorted ("all" expanded)

    @property
    def used(self) -> bool:
        return bool(self.deny)


@dataclass(frozen=True, slots=True)
class SetidRules:
    """Setting the setuid / setgid bit or file capabilities on a file, by any syscall."""

    deny: tuple[str, ...] = ()   # names from SETID_KINDS ("all" expanded)

    @property
    def used(self) -> bool:
        return bool(self.deny)


# --- issue 16: image assurance verdicts at runtime (agent/policy/images.py) ---

IMAGE_BLOCKS = ("non-compliant", "unregistered")   # what spec.images.block may name


@dataclass(frozen=True, slots=True)
class ImageRules:
    """New containers whose image's assurance verdict (moray.api.imageverdicts.judge over
    the server's image-verdict list) is in ``block`` are killed at their first exec.
    ``policies``: the assurance policies that must pass (empty: every stored verdict)."""

    block: tuple[str, ...] = ()      # names from IMAGE_BLOCKS
    policies: tuple[str, ...] = ()

    @property
    def used(self) -> bool:
        return bool(self.block)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    tenant: str
    mode: Mode
    scope: Scope
    exec: ExecRules = field(default_factory=ExecRules)
    files: FileRules = field(default_factory=FileRules)
    network: NetRules = field(default_factory=NetRules)
    syscalls: SyscallRules = field(default_factory=SyscallRules)
    source: str = "<memory>"
    digest: str = ""    # sha256 of the canonical document: unchanged policies keep their slot
    # --- issue 13 (names after a restart): the canonical document (JSON) the digest is
    # over; agent/policy/slots.py persists it so a restarted agent can rebuild the policy
    document: str = field(default="", compare=False, repr=False)
    # --- issue 13 (agent down, new container): spec.agentDown, spec.agentDownHold (s)
    agent_down: AgentDown = AgentDown.OPEN
    agent_down_hold: int = DEFAULT_AGENT_DOWN_HOLD
    namespaces: NamespaceRules = field(default_factory=NamespaceRules)   # issue 13
    setid: SetidRules = field(default_factory=SetidRules)                # issue 13
    images: ImageRules = field(default_factory=ImageRules)               # issue 16

    def rule_count(self) -> int:
        n = len(self.exec.deny) + len(self.exec.allow or ()) + int(self.exec.drift)
        n += len(self.files.deny) + len(self.files.monitor)
        n += len(self.network.deny) + len(self.network.allow or ())
        n += len(self.namespaces.deny) + len(self.setid.deny) + len(self.images.block)
        return n + len(self.syscalls.deny)
