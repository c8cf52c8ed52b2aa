"""bayesfan: fit many Bayesian models at fleet scale (split, fan out, retry, reduce)."""

import os

__version__ = "0.1.0"

# bayesfan never phones home: Prefect's server telemetry stays off unless a user turns it on.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A loaded 2-core machine can take longer than Prefect's 20 s default to start the ephemeral API.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Prefect creates only the last level of PREFECT_HOME; its SQLite database then fails to open.
if os.environ.get("PREFECT_HOME"):
    os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)
