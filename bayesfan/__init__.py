"""bayesfan: fit many Bayesian models at fleet scale (split, fan out, retry, reduce)."""

import os

__version__ = "0.1.0"

# bayesfan never phones home: Prefect's server telemetry stays off unless a user turns it on.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
