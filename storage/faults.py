"""Fault injection for the fault suite (tests/test_faults.py): kill -9 at a named point.

Code calls `maybe_crash("point:detail")` at stage boundaries. When the
environment variable DECAR_FAULT holds a glob pattern matching the point, the
process SIGKILLs itself there: no cleanup, no `finally`, no flush, like a
power cut or the OOM killer. DECAR_FAULT_SKIP=n lets the first n matches pass.
Unset (always, outside the tests), a call costs one dictionary lookup.

Points in the code (grep for maybe_crash):
    rename:<path>      storage/atomic.py: a file's bytes are written under a temporary
                       name, not yet renamed to <path>
    record:<output>    storage/records.py: <output> is in place, its completion record
                       is not written yet
    shard:<what>       flows/sharded.py: one shard of a sharded stage finished (flow process)
    embed-shard        tasks/embed.py: a Dask worker starts computing an embedding shard
    cluster            tasks/cluster.py: k-means / PIC done, labels not written yet
    train-step         tasks/launch.py (rank_step_callback): after each SGD step of an epoch
"""
from __future__ import annotations

import fnmatch
import os
import signal

_seen: dict[str, int] = {}


def maybe_crash(point: str) -> None:
    pattern = os.environ.get("DECAR_FAULT")
    if not pattern or not fnmatch.fnmatchcase(point, pattern):
        return
    _seen[pattern] = _seen.get(pattern, 0) + 1
    if _seen[pattern] > int(os.environ.get("DECAR_FAULT_SKIP", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
