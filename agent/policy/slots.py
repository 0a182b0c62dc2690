"""Which policy each slot held, and since when: names for enforcement records of any age.

The kernel decides on slot masks (bpf/maps/policy.h); an `enforce` record carries the
slots that matched and its boot-clock timestamp, not names. A slot is reused by another
policy once it is free, and records can be read long after they were made: those written
while the agent was down wait in the pinned ring buffer and are read after a restart,
before (or after) the new agent republishes. So a record is explained by the policy its
slot held *when the record was made*: :meth:`SlotHistory.at` picks, per slot, the last
entry whose ``since`` (taken before the publishing flip that made it live) is not later
than the record's timestamp. A slot is never active before its ``since``, and a slot is
reused only after a publication that left it inactive, so the choice is exact.

State it owns, and what changes it:

* per slot, a short list of ``(since_ns, Policy)``: :meth:`record` appends an entry for
  each slot whose policy changes, at each publication (PolicyEngine.apply), before the
  flip; at most KEEP entries per slot.
* the file (``path``): :meth:`save` writes the whole history atomically (temp file,
  fsync, rename) before the flip, so a crash at any point leaves a file that names every
  slot the kernel can have used. :meth:`load` reads it at start, before the first record
  is explained. The file names the pinned map it belongs to (``identity``: the id of
  mr_pconf); a file for other maps (the pins were removed and recreated) is ignored.
  It lives as long as the pins: `moray-agent unload` removes it.

The policies themselves are stored as their canonical documents (Policy.document) and
rebuilt with the same loader; a policy that no longer loads (a newer agent's field an
older agent does not know) keeps its name, mode and digest but no rules.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

from moray.api.policy.load import PolicyError, load_text
from moray.api.policy.model import Mode, Policy, Scope

log = logging.getLogger(__name__)

KEEP = 4          # entries kept per slot (the live one and the ones it replaced)
VERSION = 1


def default_path(pin_root: str, state_dir: str = "/run/moray") -> str:
    """The slot table of the pins under *pin_root*: in the run-time state directory
    (tmpfs like bpffs: both are gone after a reboot), named after the pin root."""
    return os.path.join(state_dir, "slots" + pin_root.rstrip("/").replace("/", "-") + ".json")


class SlotView(Mapping[int, Policy]):
    """The policies by slot as they were at one instant (what explain() reads)."""

    __slots__ = ("_hist", "_ts")

    def __init__(self, hist: SlotHistory, ts: int) -> None:
        self._hist, self._ts = hist, ts

    def __getitem__(self, slot: int) -> Policy:
        p = self._hist.policy_at(slot, self._ts)
        if p is None:
            raise KeyError(slot)
        return p

    def __iter__(self) -> Iterator[int]:
        return (s for s in sorted(self._hist.slots) if self._hist.policy_at(s, self._ts))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class SlotHistory:
    """Per slot: which policy it held since when (boot clock ns). Written by the policy
    thread only; entries are replaced as whole lists, so the pipeline thread reads without
    a lock."""

    def __init__(self, path: str | None = None, identity: str = "") -> None:
        self.path = path
        self.identity = identity
        self.slots: dict[int, list[tuple[int, Policy]]] = {}

    # --------------------------------------------------------------------- reading

    def policy_at(self, slot: int, ts: int) -> Policy | None:
        """The policy *slot* held at boot-clock *ts*; None if no entry is that old."""
        entries = self.slots.get(slot)
        if not entries:
            return None
        i = bisect.bisect_right([since for since, _ in entries], ts)
        return entries[i - 1][1] if i else None

    def at(self, ts: int) -> SlotView:
        return SlotView(self, ts)

    def latest(self) -> dict[int, Policy]:
        return {s: e[-1][1] for s, e in self.slots.items() if e}

    def translate(self, mask: int, ts: int, active: Mapping[str, tuple[int, Policy]]) -> int:
        """Slots of a mask made at *ts* -> the slots the same policies (by name) hold now;
        a slot whose policy is unknown is kept as it is, one whose policy is gone drops."""
        out = 0
        s = 0
        while mask >> s:
            if (mask >> s) & 1:
                p = self.policy_at(s, ts)
                if p is None:
                    out |= 1 << s
                elif p.name in active:
                    out |= 1 << active[p.name][0]
            s += 1
        return out

    # --------------------------------------------------------------------- writing

    def record(self, slotted: Iterable[tuple[int, Policy]], since: int) -> bool:
        """Slots about to be published with these policies; True if anything changed."""
        changed = False
        for slot, p in slotted:
            entries = self.slots.get(slot, [])
            if entries and entries[-1][1].digest == p.digest and entries[-1][1].name == p.name:
                continue
            self.slots[slot] = [*entries, (since, p)][-KEEP:]  # a new list: lock-free reads
            changed = True
        return changed

    def save(self) -> None:
        """Write the whole history atomically; raises OSError."""
        if not self.path:
            return
        docs: dict[str, dict[str, str]] = {}
        rows = []
        for slot in sorted(self.slots):
            for since, p in self.slots[slot]:
                docs.setdefault(p.digest, {"name": p.name, "mode": str(p.mode),
                                           "source": p.source, "document": p.document})
                rows.append({"slot": slot, "since_ns": since, "digest": p.digest})
        body = json.dumps({"version": VERSION, "identity": self.identity, "slots": rows,
                           "policies": docs}, separators=(",", ":"))
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def load(self) -> int:
        """Read the file (if it belongs to these maps); returns how many entries."""
        if not self.path:
            return 0
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            log.warning("slot table unreadable, records made before this start may be "
                        "named slot-N", extra={"path": self.path, "error": str(err)})
            return 0
        if doc.get("version") != VERSION or doc.get("identity") != self.identity:
            log.info("slot table belongs to other maps: ignored", extra={
                "path": self.path, "identity": doc.get("identity"), "ours": self.identity})
            return 0
        built: dict[str, Policy] = {}
        for digest, d in doc.get("policies", {}).items():
            built[digest] = _rebuild(digest, d)
        n = 0
        slots: dict[int, list[tuple[int, Policy]]] = {}
        for row in doc.get("slots", []):
            p = built.get(row.get("digest"))
            if p is None:
                continue
            slots.setdefault(int(row["slot"]), []).append((int(row["since_ns"]), p))
            n += 1
        for entries in slots.values():
            entries.sort(key=lambda e: e[0])
        self.slots = slots
        return n


def _rebuild(digest: str, d: Mapping[str, str]) -> Policy:
    source = d.get("source", "<slot table>")
    try:
        found = [p for p in load_text(d.get("document", ""), source) if p.name == d["name"]]
    except PolicyError as err:
        log.warning("policy of the slot table does not load: named without its rules",
                    extra={"policy": d.get("name"), "error": str(err)})
        found = []
    mode = Mode(d["mode"]) if d.get("mode") in {m.value for m in Mode} else Mode.ENFORCE
    if not found:
        return Policy(d.get("name", "?"), "default", mode, Scope(), source=source,
                      digest=digest)
    return replace(found[0], digest=digest, source=source)
