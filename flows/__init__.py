"""Every flow as a plain function: call them from scripts and notebooks, or deploy them."""
import os

# Telemetry off before Prefect is imported (no internet on many research machines).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Dask's INFO lines (every worker start and stop) drown the flows' own progress lines.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

from flows.benchmark import benchmark_downstream  # noqa: E402
from flows.download import download_audioset  # noqa: E402
from flows.features import cache_features  # noqa: E402
from flows.instance import pretrain_delores_m, pretrain_delores_s, pretrain_slicer  # noqa: E402
from flows.pretrain import pretrain_decar  # noqa: E402
from flows.recluster import recluster  # noqa: E402

__all__ = ["download_audioset", "benchmark_downstream", "cache_features", "pretrain_decar", "pretrain_delores_s",
           "pretrain_delores_m", "pretrain_slicer", "recluster"]
