# The project's image: Prefect server, Prefect worker and Dask scheduler/workers all run it.
FROM python:3.11-slim-bookworm

# CPU-only torch keeps the image small; pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (or the default PyPI index) for a CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DECAR_APP_DIR=/app \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PREFECT_RESULTS_LOCAL_STORAGE_PATH=/shared/prefect-results

WORKDIR /app

# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
RUN pip install --extra-index-url "${TORCH_INDEX}" -r /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 decar \
    && mkdir -p /shared/data /shared/runs /shared/prefect-results \
    && ln -s /shared/data /app/data && ln -s /shared/runs /app/runs \
    && chown -R decar:decar /shared

# data/ and runs/ (relative to /app, the flows' defaults) live on the shared volume.
VOLUME ["/shared"]
USER decar
CMD ["prefect", "version"]
