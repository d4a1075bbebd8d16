"""End to end: `ray job submit` a generation job to the session's Ray head, then verify."""

import subprocess

import pytest

from conftest import BIN, REPO
from gen_jobs.verify import problems


@pytest.mark.slow
def test_ray_job_submit_generation_succeeds(ray_cluster, checkpoint, tmp_path):
    _, dashboard = ray_cluster
    out = tmp_path / "submitted"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
         "python", "-m", "gen_jobs.generate", "--checkpoint", checkpoint, "--out", str(out),
         "--num-samples", "300", "--rows-per-shard", "100", "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert f"dataset: {out} (300 rows, 3 shards)" in result.stdout
    assert problems(str(out))[0] == []


@pytest.mark.slow
def test_a_relative_out_in_a_working_dir_job_is_refused(ray_cluster, checkpoint):
    """The job runs in a temporary copy of the working directory: a relative --out would be deleted with it."""
    _, dashboard = ray_cluster
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
         "python", "-m", "gen_jobs.generate", "--checkpoint", checkpoint, "--out", "out/relative",
         "--num-samples", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "error: --out 'out/relative' is relative, and this job runs in a temporary copy" in log, log[-3000:]
    assert not (REPO / "out" / "relative").exists()


@pytest.mark.slow
def test_a_client_without_the_clusters_token_is_told_what_to_do(ray_cluster, checkpoint, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    result = subprocess.run(
        [str(BIN / "raygen"), "generate", "--checkpoint", checkpoint, "--out", str(tmp_path / "data"), "--num-samples", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "uses token authentication and this client has no token: export RAY_AUTH_MODE=token" in result.stderr
    assert "Traceback" not in result.stderr
