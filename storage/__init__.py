"""Where bytes live: layout, atomic files, Zarr features, Parquet tables, records.

No Prefect here and no training code: everything is plain Python, numpy,
pyarrow and zarr, so it can be used and tested without an orchestrator.
"""
