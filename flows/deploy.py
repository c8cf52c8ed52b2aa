"""Register the ``fit-partitions`` (parent) and ``fit-batch`` (child) deployments on a work pool."""

from __future__ import annotations

from prefect.flows import Flow, load_flow_from_entrypoint

ENTRYPOINTS = {"fit-partitions": "flows/fit.py:fit_partitions", "fit-batch": "flows/batch.py:fit_batch_flow"}


def deploy_flows(work_pool: str, image: str | None, source: str) -> list[str]:
    """Deploy both flows. With ``image`` (an ECS pool) the code is the image's; without it
    (a process pool) workers run the flows from the ``source`` directory."""
    names = []
    for name, entrypoint in ENTRYPOINTS.items():
        if image:
            flow = load_flow_from_entrypoint(f"{source}/{entrypoint}")
            flow.deploy(name=name, work_pool_name=work_pool, image=image, build=False, push=False)
        else:
            flow = Flow.from_source(source=source, entrypoint=entrypoint)
            flow.deploy(name=name, work_pool_name=work_pool)
        names.append(f"{flow.name}/{name}")
    return names
