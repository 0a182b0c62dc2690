"""A compiled function policy and the decisions taken on it (pure: no I/O, no clock).

The data: one :class:`Rules`, built once at the function's start from the compiled JSON
(``moray nano compile`` / the layer's ``policy.json``, written by
:func:`moray.nano.policy.compile_policy`) and never changed after; the hook
(:mod:`moray.nano.hook`) asks it one question per audited operation and acts on the
answer: ``None`` (allowed) or a :class:`Denial` (what was refused, by which rule).

Standard library only: this module runs inside the function (the Lambda layer ships it
without the rest of moray).
"""

from __future__ import annotations

import ipaddress
import os

# typing and dataclasses are not imported at run time: they cost ~8 ms of each cold start
# (dataclasses pulls in inspect); mypy reads the names below
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1  # the compiled form's version; a layer refuses any other

# open(2) flags that make an open a write (O_CREAT/O_TRUNC/O_APPEND change the file even
# with O_RDONLY on Linux: O_TRUNC truncates, O_CREAT creates)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PROTO = {"any": 0, "tcp": 6, "udp": 17}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Record:
    """A small read-only record (the fields in ``__slots__``, set once by ``__init__``)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values: object) -> None:
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Denial(_Record):
    """A refused operation: ``kind`` exec | file | egress; ``rule`` the policy field (and
    entry) that refused it; ``target`` what was refused (a path, ``host:port``, a binary);
    ``reason`` one human sentence for the error and the event."""

    __slots__ = ("kind", "rule", "target", "reason")  # noqa: RUF023 (the order of __init__)
    kind: str
    rule: str
    target: str
    reason: str

    def __init__(self, kind: str, rule: str, target: str, reason: str) -> None:
        super().__init__(kind, rule, target, reason)


class PathRule(_Record):
    """An exact path, or a prefix (written with a trailing ``*``)."""

    __slots__ = ("text", "path", "exact")  # noqa: RUF023 (the order of __init__)
    text: str
    path: str
    exact: bool

    def __init__(self, text: str, path: str, exact: bool) -> None:
        super().__init__(text, path, exact)

    def matches(self, candidate: str) -> bool:
        return candidate == self.path if self.exact else candidate.startswith(self.path)


class FileDeny(_Record):
    __slots__ = ("rule", "read", "write")  # noqa: RUF023 (the order of __init__)
    rule: PathRule
    read: bool
    write: bool

    def __init__(self, rule: PathRule, read: bool, write: bool) -> None:
        super().__init__(rule, read, write)


class NetRule(_Record):
    __slots__ = ("text", "network", "lo", "hi", "proto")  # noqa: RUF023 (the order of __init__)
    text: str
    network: Network
    lo: int
    hi: int
    proto: int  # 0 any, 6 tcp, 17 udp

    def __init__(self, text: str, network: Network, lo: int, hi: int, proto: int) -> None:
        super().__init__(text, network, lo, hi, proto)

    def matches(self, addr: Address, port: int, proto: int) -> bool:
        return (addr.version == self.network.version and addr in self.network
                and self.lo <= port <= self.hi and self.proto in (0, proto))


class HostRule(_Record):
    """A DNS name (``api.example.com``) or a suffix (``*.example.com``: any name under it,
    not the name itself), with a port range."""

    __slots__ = ("text", "name", "suffix", "lo", "hi")  # noqa: RUF023 (the order of __init__)
    text: str
    name: str   # lower case, no trailing dot; for a suffix: ".example.com"
    suffix: bool
    lo: int
    hi: int

    def __init__(self, text: str, name: str, suffix: bool, lo: int, hi: int) -> None:
        super().__init__(text, name, suffix, lo, hi)

    def matches_name(self, host: str) -> bool:
        return host.endswith(self.name) if self.suffix else host == self.name

    def matches_port(self, port: int | None) -> bool:
        return port is None or self.lo <= port <= self.hi


def _path_rule(text: str) -> PathRule:
    if not isinstance(text, str) or not text.startswith("/"):
        raise ValueError(f"path rule {text!r}: must be an absolute path")
    if text.endswith("*"):
        return PathRule(text, text.rstrip("*"), False)
    return PathRule(text, text, True)


def _ports(spec: Any) -> tuple[int, int]:
    lo, hi = int(spec[0]), int(spec[1])
    if not 0 <= lo <= hi <= 65535:
        raise ValueError(f"bad port range {spec!r}")
    return lo, hi


def _net_rule(d: dict[str, Any]) -> NetRule:
    lo, hi = _ports(d.get("ports", (0, 65535)))
    return NetRule(str(d["text"]), ipaddress.ip_network(d["cidr"], strict=False), lo, hi,
                   PROTO[d.get("protocol", "any")])


def _host_rule(d: dict[str, Any]) -> HostRule:
    lo, hi = _ports(d.get("ports", (0, 65535)))
    name = normalize_host(str(d["host"]))
    suffix = name.startswith("*.")
    return HostRule(str(d["text"]), name[1:] if suffix else name, suffix, lo, hi)


def normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def parse_ip(host: str) -> Address | None:
    """An address literal (an IPv4-mapped IPv6 address is its IPv4 address: the packet
    goes to that one); None for a name."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Rules:
    """The compiled policy. Built by :meth:`from_json`; read-only afterwards."""

    def __init__(self, name: str, mode: str, exec_allow: tuple[PathRule, ...],
                 writable: tuple[PathRule, ...], file_deny: tuple[FileDeny, ...],
                 egress_allow: tuple[NetRule, ...] | None, egress_hosts: tuple[HostRule, ...],
                 egress_deny: tuple[NetRule, ...], ctypes: str = "allow",
                 drift: str = "allow") -> None:
        if mode not in ("enforce", "monitor"):
            raise ValueError(f"mode {mode!r}: must be enforce or monitor")
        self.name = name
        self.mode = mode
        self.exec_allow = exec_allow
        self.writable = writable
        self.file_deny = file_deny
        self.read_deny = tuple(d for d in file_deny if d.read)
        self.write_deny = tuple(d for d in file_deny if d.write)
        # None: egress not restricted (only egress_deny applies)
        self.egress_allow = egress_allow
        self.egress_hosts = egress_hosts
        self.egress_deny = egress_deny
        if ctypes not in ("allow", "deny"):
            raise ValueError(f"ctypes {ctypes!r}: must be allow or deny")
        self.ctypes = ctypes
        if drift not in ("allow", "block"):
            raise ValueError(f"drift {drift!r}: must be allow or block")
        self.drift = drift

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    @property
    def egress_restricted(self) -> bool:
        return self.egress_allow is not None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Rules:
        """The compiled form (docs/nano.md "The compiled form"); ValueError if malformed."""
        try:
            if doc.get("format") != FORMAT:
                raise ValueError(f"compiled policy format {doc.get('format')!r}: this "
                                 f"enforcer reads format {FORMAT} (rebuild the layer)")
            egress = doc.get("egress") or {}
            allow = egress.get("allow")
            return cls(
                name=str(doc["name"]), mode=str(doc.get("mode", "enforce")),
                exec_allow=tuple(_path_rule(t) for t in doc.get("exec_allow", ())),
                writable=tuple(_path_rule(t) for t in doc.get("writable", ())),
                file_deny=tuple(FileDeny(_path_rule(d["path"]), "read" in d["access"],
                                         "write" in d["access"])
                                for d in doc.get("file_deny", ())),
                egress_allow=None if allow is None else tuple(_net_rule(d) for d in allow),
                egress_hosts=tuple(_host_rule(d) for d in egress.get("hosts", ())),
                egress_deny=tuple(_net_rule(d) for d in egress.get("deny", ())),
                ctypes=str((doc.get("code") or {}).get("ctypes", "allow")),
                drift=str((doc.get("code") or {}).get("drift", "allow")),
            )
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"malformed compiled policy: {err!r}") from err

    def allowing(self, host: str, port: int) -> Rules:
        """These rules with one more egress destination allowed (the Lambda runtime API
        the runtime itself talks to): a copy, self is unchanged."""
        if self.egress_allow is None:
            return self
        extra: list[NetRule] = []
        hosts = self.egress_hosts
        ip = parse_ip(host)
        if ip is not None:
            extra.append(NetRule(f"runtime API {host}:{port}",
                                 ipaddress.ip_network(ip), port, port, 6))
        else:
            hosts = (*hosts, HostRule(f"runtime API {host}:{port}", normalize_host(host),
                                      False, port, port))
        return Rules(self.name, self.mode, self.exec_allow, self.writable, self.file_deny,
                     (*self.egress_allow, *extra), hosts, self.egress_deny, self.ctypes,
                     self.drift)

    # --- decisions: None = allowed --------------------------------------------------

    def exec(self, binary: str) -> Denial | None:
        """A new program: ``binary`` the absolute path (or the name as given when it was
        not found on PATH)."""
        for r in self.exec_allow:
            if r.matches(binary):
                return None
        return Denial("exec", "exec.allow" if self.exec_allow else "exec",
                      binary, "running programs is not allowed" if not self.exec_allow
                      else "program not in exec.allow")

    def native(self, what: str) -> Denial | None:
        """ctypes imported, loading a library, finding a symbol, calling a foreign function
        or making an object at a raw address (``code.ctypes: deny``): the ways Python code
        reaches native code and memory that the hooks would not see."""
        if self.ctypes == "allow":
            return None
        return Denial("code", "code.ctypes", what, "native code through ctypes is not allowed")

    def code_file(self, path: str) -> Denial | None:
        """Python code about to run from ``path`` (a module, ``runpy``, ``exec`` of code
        compiled from a file): with ``code.drift: block``, not from the writable paths,
        where the function (or a payload) wrote it at run time."""
        if self.drift == "allow":
            return None
        for r in self.writable:
            if r.matches(path):
                return Denial("code", "code.drift", path,
                              "Python code written at run time (under files.writable) "
                              "is not run")
        return None

    def read(self, path: str) -> Denial | None:
        """A read of ``path`` (absolute, normalized, symbolic links resolved)."""
        for d in self.read_deny:
            if d.rule.matches(path):
                return Denial("file", f"files.deny {d.rule.text}", path,
                              "reading this file is not allowed")
        return None

    def write(self, path: str) -> Denial | None:
        """A change to ``path`` (create, write, truncate, remove, rename, chmod, ...)."""
        for d in self.write_deny:
            if d.rule.matches(path):
                return Denial("file", f"files.deny {d.rule.text}", path,
                              "writing this file is not allowed")
        for r in self.writable:
            if r.matches(path):
                return None
        where = ", ".join(r.text for r in self.writable) or "nowhere"
        return Denial("file", "files.writable", path,
                      f"writes are allowed only under {where}")

    def host_rule(self, host: str, port: int | None) -> HostRule | None:
        h = normalize_host(host)
        for r in self.egress_hosts:
            if r.matches_name(h) and r.matches_port(port):
                return r
        return None

    def resolve(self, host: str, port: int | None) -> Denial | None:
        """A name looked up (getaddrinfo, gethostbyname): with egress restricted, only
        names of ``network.egress.allow`` hosts (IP literals are judged at connect)."""
        if self.egress_allow is None or not host or parse_ip(host) is not None:
            return None
        if self.host_rule(host, port) is not None:
            return None
        where = f"{host}:{port}" if port is not None else host
        return Denial("egress", "network.egress.allow", where,
                      "name not in network.egress.allow")

    def connect(self, host: str, port: int, proto: int,
                resolved_from: tuple[str, ...] = ()) -> Denial | None:
        """A connection (or datagram) to ``host`` (an address, or a name the socket
        resolves itself) and ``port``; ``resolved_from``: the allowed names this address
        was resolved from in this process, if any."""
        ip = parse_ip(host)
        where = f"[{host}]:{port}" if ip is not None and ip.version == 6 else f"{host}:{port}"
        if ip is not None:
            for r in self.egress_deny:
                if r.matches(ip, port, proto):
                    return Denial("egress", f"network.egress.deny {r.text}", where,
                                  "destination denied")
        if self.egress_allow is None:
            return None
        if ip is not None:
            for r in self.egress_allow:
                if r.matches(ip, port, proto):
                    return None
        for name in resolved_from if ip is not None else (host,):
            if self.host_rule(name, port) is not None:
                return None
        return Denial("egress", "network.egress.allow", where,
                      "destination not in network.egress.allow")


__all__ = ["FORMAT", "WRITE_FLAGS", "Denial", "FileDeny", "HostRule", "NetRule", "PathRule",
           "Rules", "normalize_host", "parse_ip"]
