# The bpexp image: the package installed the way the README installs it, plus the
# PostgreSQL driver and MLflow's auth extra for the tracking server service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/bpexp
COPY pyproject.toml README.md ./
COPY bpexp ./bpexp
COPY experiments ./experiments
RUN pip install -e ".[postgres]" "mlflow[auth]"

# Runs and reports land in /data unless the service points elsewhere.
WORKDIR /data
ENTRYPOINT []
CMD ["bpexp", "--help"]
