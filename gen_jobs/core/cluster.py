"""Joining Ray: the same command runs on a laptop and on a cluster.

`connect()` joins the cluster named by RAY_ADDRESS (as `ray job submit` sets it)
or, without it, starts a local Ray of its own on this machine: never whatever
cluster Ray's record of the machine's "current cluster" names, which outlives
the cluster it names (a stopped `ray start --head` leaves it behind, and a bare
`ray.init()` would then retry that dead address until killed).
"""

from __future__ import annotations

import os


def connect() -> None:
    import ray

    from gen_jobs.core.console import quiet_ray, verbose
    from gen_jobs.core.errors import UserError

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    if address.startswith(("http://", "https://")):
        raise UserError(f"RAY_ADDRESS is {address}, a dashboard address (what `ray job submit` takes); raygen joins "
                        "a cluster at its GCS address: export RAY_ADDRESS=HOST:6379 (the address `ray start --head` "
                        "prints) and give `ray job submit` the dashboard as RAY_API_SERVER_ADDRESS or --address")
    try:
        ray.init(address=address, logging_level="INFO" if verbose() else "ERROR", configure_logging=True)
        quiet_ray()  # raygen's own lines only, unless --verbose (gen_jobs.core.console)
    except Exception as e:  # Ray's own words for a cluster that wants a token are buried in a chain; say what to do
        if not _about_authentication(e):
            raise
        raise UserError(f"the Ray cluster at {address} uses token authentication and this client has no token: "
                        "export RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token or "
                        "RAY_AUTH_TOKEN (see docs/deployment.md, Ray notes)") from e


def _about_authentication(error: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is Ray refusing a client without the cluster's token."""
    seen = 0
    while error is not None and seen < 10:
        if "AuthenticationError" in type(error).__name__ or "InvalidAuthToken" in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def quiet_data_progress() -> None:
    """Ray Data's progress bars garble logs; raygen prints its own progress lines."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
