"""Task names, their queues, and a task to send: what the API and the workers agree on.

The API sends tasks by name and never imports the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Queue(StrEnum):
    CPU = "cpu"  # parsing and planning: a prefork pool, one process per core
    MODEL = "model"  # model calls and webhooks: many in flight per worker


class Task(StrEnum):
    INGEST_DOCUMENT = "longdoc.ingest_document"
    PLAN_JOB = "longdoc.plan_job"
    EXTRACT_CHUNK = "longdoc.extract_chunk"
    FINALIZE_JOB = "longdoc.finalize_job"
    DELIVER_WEBHOOK = "longdoc.deliver_webhook"
    SWEEP = "longdoc.sweep"
    COLLECT_BLOBS = "longdoc.collect_blobs"
    PURGE = "longdoc.purge"

    @property
    def queue(self) -> Queue:
        return _QUEUES[self]


_QUEUES = {
    Task.INGEST_DOCUMENT: Queue.CPU,
    Task.PLAN_JOB: Queue.CPU,
    Task.EXTRACT_CHUNK: Queue.MODEL,
    Task.FINALIZE_JOB: Queue.MODEL,
    Task.DELIVER_WEBHOOK: Queue.MODEL,
    Task.SWEEP: Queue.CPU,
    Task.COLLECT_BLOBS: Queue.CPU,
    Task.PURGE: Queue.CPU,
}


@dataclass(frozen=True)
class Send:
    """One task to send once the transaction that asked for it has committed."""

    task: Task
    arg: str
    countdown: float | None = None
