"""The ``pool`` backend: each batch is a flow run of the ``fit-batch`` deployment on a Prefect
work pool (ECS with Fargate Spot in production, a process pool locally).

One polling loop (no thread per batch) keeps at most ``max_in_flight`` runs going.
A run that ends Failed is resubmitted up to ``max_retries`` times; one that ends
Crashed or Cancelled (a killed worker, a Spot interruption) up to
``max_interruptions`` times. Each submission's idempotency key is the batch id,
a hash of the artifact location and the attempt number: a restarted parent finds
its children again instead of duplicating them, a new attempt is never answered
with the old failed run, and the same fit into another location (the batch id does
not depend on it) is not answered with the runs that wrote the first one.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment

from bayesfan.config import FitConfig
from bayesfan.storage import Store
from flows.fanout import failure
from tasks.sample import finished_record
from tasks.split import BatchPlan

DEPLOYMENT = "fit-batch/fit-batch"
#: Seconds between polls of the in-flight flow runs unless ``FitConfig.poll_seconds`` says otherwise.
POLL_SECONDS = 2.0


def run_on_pool(config: FitConfig, plans: list[BatchPlan], on_settled=lambda plan, ok: None) -> tuple[list[dict], dict]:
    """Run every plan as a ``fit-batch`` flow run; return (records in plan order, failures)."""
    store = Store(config.out)
    queue, in_flight = deque(plans), {}
    location = hashlib.sha256(config.out.encode()).hexdigest()[:8]
    errors, interruptions = Counter(), Counter()
    records, failures = {}, {}
    with get_client(sync_client=True) as client:
        while queue or in_flight:
            while queue and len(in_flight) < config.max_in_flight:
                plan = queue.popleft()
                attempt = errors[plan.batch_id] + interruptions[plan.batch_id] + 1
                run = run_deployment(
                    DEPLOYMENT, timeout=0, idempotency_key=f"{plan.batch_id}-{location}-{attempt}",
                    parameters={"config": config.model_dump(mode="json"), "plan": plan.model_dump(),
                                "attempt": attempt},
                )
                in_flight[run.id] = plan
            time.sleep(config.poll_seconds or POLL_SECONDS)
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(in_flight))))
            for run in runs:
                if run.state is None or not run.state.is_final():
                    continue
                plan = in_flight.pop(run.id)
                record = finished_record(store, plan)
                if record is not None:
                    records[plan.batch_id] = record
                    on_settled(plan, True)
                    continue
                budget, used = (
                    (config.max_retries, errors) if run.state.is_failed() else (config.max_interruptions, interruptions)
                )
                if used[plan.batch_id] < budget:
                    used[plan.batch_id] += 1
                    queue.append(plan)
                else:
                    attempts = errors[plan.batch_id] + interruptions[plan.batch_id] + 1
                    failures[plan.batch_id] = failure(plan, attempts, f"{run.state.type.value}: {run.state.message}")
                    on_settled(plan, False)
    return [records[p.batch_id] for p in plans if p.batch_id in records], failures
