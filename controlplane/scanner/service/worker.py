"""Scan workers: take jobs from a queue, scan, store verdicts, close the job.

``JobQueue`` is the seam: the local implementation is the store's ``scan_job`` table
(workers sharing the database), ``controlplane.scanner.service.remote.HttpJobQueue`` the one on
moray-server's REST API (workers on any host). Any number of workers run in parallel; a
job is leased to one worker at a time. While a scan runs the worker extends its lease
every third of ``lease_seconds``, so a short lease is safe for long scans; a worker that
dies stops extending, and once the lease expires the job is claimed again (up to three
attempts). When ``stop`` is set (SIGTERM) the running scan gets ``grace`` seconds to
finish; after that, or at once when ``abort`` is set, the job is given back to the
queue unfinished (``release_scan``) and the worker returns.

A verdict is stamped with the vulnerability data generation read *before* the scan, so
an import that lands during a scan leaves the verdict stale and the image is rescanned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import yaml

from moray.controlplane.scanner.engine.model import ScanResult
from moray.controlplane.scanner.engine.policy import AssurancePolicy, evaluate, policy_from_dict
from moray.controlplane.scanner.errors import AccessDenied, ScanError
from moray.controlplane.store.scanstore import (
    ImageReport,
    ImageVuln,
    ScanJob,
    image_report,
    image_vulns,
)

log = logging.getLogger(__name__)


class VerdictSink(Protocol):
    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str], generation: int | None = None, *,
                       vulnerabilities: Sequence[ImageVuln] | None = None,
                       config_digest: str = "", job_id: int | None = None,
                       report: ImageReport | None = None) -> object: ...


class JobQueue(Protocol):
    def claim_scan(self, worker: str, lease_seconds: float = 600.0,
                   max_attempts: int = 3) -> ScanJob | None: ...

    def extend_scan(self, job_id: int, worker: str, lease_seconds: float = 600.0) -> bool: ...

    def release_scan(self, job_id: int, worker: str) -> bool: ...

    def finish_scan(self, job_id: int, worker: str, *, digest: str = "",
                    error: str = "") -> bool: ...


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    lost: int = 0       # finished after the lease had gone to another worker
    released: int = 0   # given back unfinished at shutdown
    queue_errors: int = 0


def job_policy(job: ScanJob) -> AssurancePolicy | None:
    if not job.policy:
        return None
    doc = yaml.safe_load(job.policy)
    if not isinstance(doc, dict):
        raise ScanError("job policy is not a mapping")
    return policy_from_dict(doc, f"job {job.id}")


@dataclass
class _Outcome:
    digest: str = ""
    error: str = ""


class Worker:
    """One worker loop; ``run()`` processes jobs until ``stop`` is set (or the queue is
    empty, with ``once``)."""

    def __init__(self, queue: JobQueue, scan: Callable[[ScanJob], ScanResult], *, name: str,
                 verdicts: VerdictSink | None = None, stop: threading.Event | None = None,
                 abort: threading.Event | None = None, idle_wait: float = 1.0,
                 lease_seconds: float = 600.0, grace: float = 30.0,
                 generation: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue, self.scan, self.name, self.verdicts = queue, scan, name, verdicts
        self.stop = stop or threading.Event()
        self.abort = abort or threading.Event()
        self.idle_wait, self.lease_seconds, self.grace = idle_wait, lease_seconds, grace
        self.generation = generation
        self.clock = clock
        self.stats = WorkerStats()

    def run(self, *, once: bool = False) -> WorkerStats:
        while not self.stop.is_set():
            try:
                job = self.queue.claim_scan(self.name, self.lease_seconds)
            except AccessDenied:
                raise
            except ScanError as err:  # server away: count, log, try again
                self.stats.queue_errors += 1
                log.warning("cannot claim a scan job", extra={"worker": self.name,
                                                              "error": str(err)})
                self.stop.wait(self.idle_wait)
                continue
            if job is None:
                if once:
                    break
                self.stop.wait(self.idle_wait)
                continue
            self._run_job(job)
        return self.stats

    def _evaluate(self, job: ScanJob, generation: int | None) -> _Outcome:
        try:
            policy = job_policy(job)
            result = self.scan(job)
            if policy is not None and self.verdicts is not None:
                passed, reasons = evaluate(result, policy)
                self.verdicts.record_verdict(result.digest, job.image, policy.name, passed,
                                             reasons, generation,
                                             vulnerabilities=image_vulns(result),
                                             config_digest=result.config_digest,
                                             job_id=job.id, report=image_report(result))
            return _Outcome(digest=result.digest)
        except (ScanError, OSError, yaml.YAMLError) as err:
            log.warning("scan job failed", extra={"job": job.id, "image": job.image,
                                                  "error": str(err)})
            return _Outcome(error=str(err) or type(err).__name__)
        except Exception as err:  # a bug in an analyzer must not kill the worker
            log.exception("scan job crashed", extra={"job": job.id, "image": job.image})
            return _Outcome(error=f"internal error: {type(err).__name__}: {err}")

    def _run_job(self, job: ScanJob) -> None:
        log.info("scan job claimed", extra={"job": job.id, "image": job.image,
                                            "worker": self.name, "attempt": job.attempts})
        try:
            generation = self.generation() if self.generation else None
        except ScanError as err:
            log.warning("cannot read the vulndb generation", extra={"error": str(err)})
            generation = 0  # the verdict will count as stale: rescanned, never wrongly fresh
        box: list[_Outcome] = []
        done = threading.Event()

        def body() -> None:
            try:
                box.append(self._evaluate(job, generation))
            finally:
                done.set()

        threading.Thread(target=body, name=f"scan-job-{job.id}", daemon=True).start()
        renew_every = self.lease_seconds / 3
        next_renew = self.clock() + renew_every
        deadline: float | None = None
        while not done.wait(min(0.1, renew_every)):
            now = self.clock()
            if self.stop.is_set() and deadline is None:
                deadline = now + self.grace
                log.info("stopping: waiting for the running scan",
                         extra={"job": job.id, "grace": self.grace})
            if self.abort.is_set() or (deadline is not None and now >= deadline):
                self._release(job)
                return
            if now >= next_renew:
                next_renew = now + renew_every
                self._extend(job)
        self._finish(job, box[0] if box else _Outcome(error="scan thread ended without result"))

    def _extend(self, job: ScanJob) -> None:
        try:
            if not self.queue.extend_scan(job.id, self.name, self.lease_seconds):
                log.warning("scan job lease lost while scanning", extra={"job": job.id})
        except ScanError as err:
            self.stats.queue_errors += 1
            log.warning("cannot extend a lease", extra={"job": job.id, "error": str(err)})

    def _release(self, job: ScanJob) -> None:
        try:
            given_back = self.queue.release_scan(job.id, self.name)
        except ScanError as err:
            self.stats.queue_errors += 1
            log.warning("cannot give a job back; its lease will expire",
                        extra={"job": job.id, "error": str(err)})
            return
        self.stats.released += given_back
        log.info("scan job given back unfinished", extra={"job": job.id, "ok": given_back})

    def _finish(self, job: ScanJob, outcome: _Outcome) -> None:
        try:
            closed = self.queue.finish_scan(job.id, self.name, digest=outcome.digest,
                                            error=outcome.error)
        except ScanError as err:
            self.stats.queue_errors += 1
            log.warning("cannot close a scan job; its lease will expire",
                        extra={"job": job.id, "error": str(err)})
            return
        if outcome.error:
            self.stats.failed += 1
        if not closed:
            self.stats.lost += 1
            log.warning("scan job lease lost before completion", extra={"job": job.id})
        elif not outcome.error:
            self.stats.done += 1
            log.info("scan job done", extra={"job": job.id, "digest": outcome.digest})


def run_worker(queue: JobQueue, scan: Callable[[ScanJob], ScanResult], *, name: str,
               verdicts: VerdictSink | None = None, stop: threading.Event | None = None,
               idle_wait: float = 1.0, once: bool = False, lease_seconds: float = 600.0,
               grace: float = 30.0, generation: Callable[[], int] | None = None,
               abort: threading.Event | None = None) -> WorkerStats:
    """Process jobs until ``stop`` is set (or the queue is empty, with ``once``)."""
    return Worker(queue, scan, name=name, verdicts=verdicts, stop=stop, abort=abort,
                  idle_wait=idle_wait, lease_seconds=lease_seconds, grace=grace,
                  generation=generation).run(once=once)
