"""Ring buffer -> bounded queue, on one thread that does nothing else.

The reader copies records out of the ring buffer in batches (agent/bpf/ringbuf.py) and
hands each batch to a bounded queue. Decoding, enrichment and output happen on the
consumer side. The queue also carries typed events from user space, each batch a tuple
(`Batch`): enforcement decisions made by the agent (`Decision`, agent/policy/hold.py),
queued in order with the kernel's records. When the queue is full the batch is dropped and counted
(`dropped`, and per record type in `dropped_by_type`: the opcode of each dropped record's
header): the kernel keeps running and the loss is visible in metrics, never silent.
Kernel-side losses (ring buffer full) are counted separately in the mr_stats map, in all and
per record type. A loss report (agent/output/loss.py) is queued past the bound
(`put_control`): it is what says that the rest was dropped.

The queue is bounded twice: by records, and by the memory its kernel records hold (their
bytes plus each `bytes` object's own overhead, `RECORD_OVERHEAD`), 8 MiB by default. The
record bound alone let a backlog of long records (exec with 1 KiB of argv) hold ~70 MB;
the byte bound keeps the agent's peak RSS within its budget whatever the records are.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from moray.agent.bpf.abi import REPEAT, Op
from moray.agent.bpf.ringbuf import RingBuffer
from moray.agent.events.types import Decision, LossReport

log = logging.getLogger(__name__)

# kernel records (a list of bytes, as read) or typed events from user space (a tuple)
Batch = list[bytes] | tuple[Decision, ...] | tuple[LossReport]

# opcode -> the type label of moray_events_lost_total (closed: the opcodes of abi.h)
TYPE_OF_OP: dict[int, str] = {int(o): o.name.lower() for o in Op}

REPEAT_OPEN = REPEAT.size  # a summary's repeated record starts here
RECORD_OVERHEAD = 41   # a bytes object's header (33) and its slot in the batch list (8)
MAX_BYTES = 8 << 20


def batch_bytes(batch: Batch) -> int:
    """The memory a batch of kernel records holds (0 for typed events: few and small)."""
    if type(batch) is list:
        return sum(map(len, batch)) + RECORD_OVERHEAD * len(batch)
    return 0


class BatchQueue:
    """Bounded FIFO of record batches; bounded by records and by bytes, not batches."""

    def __init__(self, max_records: int, max_bytes: int = MAX_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._q: deque[tuple[Batch, int]] = deque()
        self._n = 0
        self._bytes = 0
        self._cv = threading.Condition()
        self.dropped = 0
        self.dropped_by_type: dict[str, int] = {}
        self.closed = False

    def put(self, batch: Batch, nbytes: int | None = None) -> bool:
        """Queue `batch` (its `batch_bytes`, if the caller has it), or drop and count it."""
        size = batch_bytes(batch) if nbytes is None else nbytes
        with self._cv:
            if (self._n + len(batch) > self.max_records
                    or (self._bytes + size > self.max_bytes and self._q)):
                self.dropped += len(batch)
                self._count_dropped(batch)
                return False
            self._q.append((batch, size))
            self._n += len(batch)
            self._bytes += size
            self._cv.notify()
            return True

    def put_control(self, batch: Batch) -> None:
        """Queue past the bound: for the rare user-space reports about the queue itself."""
        with self._cv:
            self._q.append((batch, 0))
            self._n += len(batch)
            self._cv.notify()

    def _count_dropped(self, batch: Batch) -> None:
        by = self.dropped_by_type
        if type(batch) is list:
            ops: dict[int, int] = {}
            for rec in batch:
                op = rec[0] | rec[1] << 8 if len(rec) >= 2 else 0
                if op == Op.REPEAT and len(rec) >= REPEAT_OPEN:
                    # a summary of N opens: N events lost (its nested record's type)
                    op = rec[REPEAT_OPEN] | rec[REPEAT_OPEN + 1] << 8
                    ops[op] = ops.get(op, 0) + int.from_bytes(rec[16:24], "little")
                    continue
                ops[op] = ops.get(op, 0) + 1
            for op, n in ops.items():
                t = TYPE_OF_OP.get(op, "unknown")
                by[t] = by.get(t, 0) + n
        else:
            for item in batch:
                t = "decision" if isinstance(item, Decision) else "loss"
                by[t] = by.get(t, 0) + 1

    def get(self, timeout: float) -> Batch | None:
        with self._cv:
            if not self._q and not self.closed:
                self._cv.wait(timeout)
            if not self._q:
                return None
            batch, size = self._q.popleft()
            self._n -= len(batch)
            self._bytes -= size
            return batch

    def bytes(self) -> int:
        """The memory the queued records hold (`batch_bytes`)."""
        return self._bytes

    def depth(self) -> int:
        return self._n

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()


class Reader(threading.Thread):
    def __init__(self, ring: RingBuffer, queue: BatchQueue, batch: int = 2048,
                 poll_timeout: float = 0.1) -> None:
        super().__init__(name="moray-reader", daemon=True)
        self.ring = ring
        self.queue = queue
        self.batch = batch
        self.poll_timeout = poll_timeout
        self.records = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        ring, queue, stop = self.ring, self.queue, self._stopping
        while not stop.is_set():
            recs = ring.consume(self.batch)
            if recs:
                self.records += len(recs)
                queue.put(recs)
                continue
            ring.wait(self.poll_timeout)
        # drain what the kernel wrote before we were asked to stop
        while recs := ring.consume(self.batch):
            self.records += len(recs)
            queue.put(recs)

    def stop(self) -> None:
        self._stopping.set()
