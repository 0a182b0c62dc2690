"""Scan workers: take jobs from a queue, scan, store verdicts, close the job.

``JobQueue`` is the seam: the local implementation is the store's ``scan_job`` table
(workers on one host, or sharing the database file); a server-backed queue for workers on
other hosts implements the same three methods. Any number of workers run in parallel;
a job is leased to one worker, and a worker that dies loses its lease, so the job is
claimed again after ``lease_seconds`` (up to three attempts).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import yaml

from controlplane.scanner.errors import ScanError
from controlplane.scanner.model import ScanResult
from controlplane.scanner.policy import AssurancePolicy, evaluate, policy_from_dict
from controlplane.store.scanstore import ScanJob

log = logging.getLogger(__name__)


class VerdictSink(Protocol):
    def record_verdict(self, image_digest: str, image: str, policy: str, passed: bool,
                       reasons: list[str]) -> object: ...


class JobQueue(Protocol):
    def claim_scan(self, worker: str, lease_seconds: float = 600.0,
                   max_attempts: int = 3) -> ScanJob | None: ...

    def finish_scan(self, job_id: int, worker: str, *, digest: str = "",
                    error: str = "") -> bool: ...


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    lost: int = 0


def job_policy(job: ScanJob) -> AssurancePolicy | None:
    if not job.policy:
        return None
    doc = yaml.safe_load(job.policy)
    if not isinstance(doc, dict):
        raise ScanError("job policy is not a mapping")
    return policy_from_dict(doc, f"job {job.id}")


def run_worker(queue: JobQueue, scan: Callable[[str], ScanResult], *, name: str,
               verdicts: VerdictSink | None = None, stop: threading.Event | None = None,
               idle_wait: float = 1.0, once: bool = False) -> WorkerStats:
    """Process jobs until ``stop`` is set (or the queue is empty, with ``once``)."""
    stop = stop or threading.Event()
    stats = WorkerStats()
    while not stop.is_set():
        job = queue.claim_scan(name)
        if job is None:
            if once:
                break
            stop.wait(idle_wait)
            continue
        log.info("scan job claimed", extra={"job": job.id, "image": job.image, "worker": name})
        try:
            policy = job_policy(job)
            result = scan(job.image)
            if policy is not None and verdicts is not None:
                passed, reasons = evaluate(result, policy)
                verdicts.record_verdict(result.digest, job.image, policy.name, passed, reasons)
        except (ScanError, OSError, yaml.YAMLError) as err:
            log.warning("scan job failed", extra={"job": job.id, "image": job.image,
                                                  "error": str(err)})
            stats.failed += 1
            if not queue.finish_scan(job.id, name, error=str(err) or type(err).__name__):
                stats.lost += 1
            continue
        if queue.finish_scan(job.id, name, digest=result.digest):
            stats.done += 1
        else:
            stats.lost += 1
            log.warning("scan job lease lost before completion", extra={"job": job.id})
    return stats
