"""Progress of a fit as batches settle: a Prefect progress artifact, plus live terminal listeners.

The CLI subscribes a rich progress bar (``subscribe``); the flow reports each batch
that finishes for good through ``Progress.settled``.
"""

from __future__ import annotations

from typing import Callable

from tasks.artifacts import create_batch_progress, update_batch_progress
from tasks.split import BatchPlan

#: Called with (partitions done, partitions total, partitions failed) after every settled batch.
LISTENERS: list[Callable[[int, int, int], None]] = []


def subscribe(listener: Callable[[int, int, int], None]) -> None:
    LISTENERS.append(listener)


class Progress:
    """Counts of one sampling round; ``done`` are batch ids already finished (reused)."""

    def __init__(self, prefix: str, plans: list[BatchPlan], done: set[str]):
        self.batches, self.failed_batches = len(plans), 0
        self.settled_batches = len(done)
        self.partitions = sum(len(p.partitions) for p in plans)
        self.done = sum(len(p.partitions) for p in plans if p.batch_id in done)
        self.failed = 0
        self.artifact = create_batch_progress(prefix, total=self.batches, done=self.settled_batches)
        self._notify()

    def settled(self, plan: BatchPlan, ok: bool) -> None:
        self.settled_batches += 1
        self.done += len(plan.partitions)
        if not ok:
            self.failed_batches += 1
            self.failed += len(plan.partitions)
        update_batch_progress(self.artifact, self.settled_batches, self.batches, self.failed_batches)
        self._notify()

    def _notify(self) -> None:
        for listener in LISTENERS:
            listener(self.done, self.partitions, self.failed)
