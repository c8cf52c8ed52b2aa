# bayesfan image: Prefect ECS worker, ECS flow runs and AWS Batch children (see infra/entrypoint.sh).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    BAYESFAN_CACHE_DIR=/tmp/bayesfan-cache

RUN groupadd --system --gid 10001 bayesfan \
    && useradd --system --uid 10001 --gid bayesfan --create-home --home-dir /home/bayesfan \
       --shell /usr/sbin/nologin bayesfan

WORKDIR /opt/bayesfan

COPY requirements.lock ./
RUN pip install --no-cache-dir --requirement requirements.lock

COPY pyproject.toml README.md ./
COPY bayesfan ./bayesfan
COPY flows ./flows
COPY tasks ./tasks
COPY models ./models
RUN pip install --no-cache-dir --no-deps .

COPY --chmod=0755 infra/entrypoint.sh /usr/local/bin/bayesfan-entrypoint

USER 10001:10001
ENTRYPOINT ["/usr/local/bin/bayesfan-entrypoint"]
CMD ["worker"]
