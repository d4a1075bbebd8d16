"""Joining Ray: the same command runs on a laptop and on a cluster.

`connect()` joins the cluster named by RAY_ADDRESS (as `ray job submit` sets it)
or starts a local one on this machine.
"""

from __future__ import annotations

import os


def connect() -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING", configure_logging=True)


def quiet_data_progress() -> None:
    """Ray Data's progress bars garble logs; raygen prints its own progress lines."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
