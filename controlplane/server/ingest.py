"""Event ingest with group commit: the batches that arrive together are stored together.

Every event stream (an agent's own, or a gateway's carrying many agents) hands its batch
to the process's one ``IngestWriter`` and waits; the writer stores everything waiting in
one transaction (``ControlPlaneStore.insert_groups``) and answers each stream with its
own counts, after the commit, so an acknowledgement still means durable. While one
transaction runs the next batches queue, so the transactions grow with the load instead
of their number: 1,000 agents sending 50-event batches cost a few large commits a
second, not 1,000 small ones. Should a combined transaction fail, each batch is tried
alone, so one bad batch never fails the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from moray.controlplane.store.cpstore import ControlPlaneStore, EventGroup, InsertResult

log = logging.getLogger(__name__)

MAX_EVENTS = 20_000      # events stored in one transaction (more wait for the next)

Answer = asyncio.Future[list[InsertResult | None]]


class IngestWriter:
    def __init__(self, store: ControlPlaneStore) -> None:
        self.store = store
        self._waiting: list[tuple[Sequence[EventGroup], Answer]] = []
        self._task: asyncio.Task[None] | None = None

    async def store_groups(self, groups: Sequence[EventGroup]) -> list[InsertResult | None]:
        """Store ``groups`` (see ``insert_groups``) with whatever else is waiting; the
        result once committed."""
        future: asyncio.Future[list[InsertResult | None]] = \
            asyncio.get_running_loop().create_future()
        self._waiting.append((groups, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            take, events = 0, 0
            for groups, _ in self._waiting:
                if take and events + sum(len(g[2]) for g in groups) > MAX_EVENTS:
                    break
                events += sum(len(g[2]) for g in groups)
                take += 1
            batch, self._waiting = self._waiting[:take], self._waiting[take:]
            await self._write(batch)

    async def _write(self, batch: list[tuple[Sequence[EventGroup], Answer]]) -> None:
        flat = [g for groups, _ in batch for g in groups]
        try:
            results = await asyncio.to_thread(self.store.insert_groups, flat)
        except Exception as err:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(err)
                return
            log.warning("storing %d event batches together failed, one by one", len(batch),
                        extra={"error": str(err)})
            for one in batch:
                await self._write([one])
            return
        at = 0
        for groups, future in batch:
            if not future.done():        # the stream may have gone (cancelled)
                future.set_result(results[at:at + len(groups)])
            at += len(groups)
