"""The quality gate (`raygen generate --filter`): deterministic retries, counts that add up, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import read_rows, run_cli
from gen_jobs.core.errors import UserError
from gen_jobs.data.gate import candidate_seed, gated, parse_filter, passes
from gen_jobs.generate import GenerateArgs, generate
from gen_jobs.verify import problems


def test_filters_parse_or_say_what_is_wrong():
    gate = parse_filter("confidence>=0.8, perplexity <= 40 and in_key>.9", 3)
    assert [str(c) for c in gate.conditions] == ["confidence>=0.8", "perplexity<=40", "in_key>0.9"]
    assert gate.max_attempts == 3
    for bad in ("confidence", "confidence => 0.8", "0.8 <= confidence", "confidence>=high", ""):
        with pytest.raises(UserError, match="--filter"):
            parse_filter(bad, 4)


def test_a_null_or_nan_figure_never_passes():
    table = pa.table({"x": pa.array([0.9, None, float("nan"), 0.1], pa.float64())})
    assert passes(table, parse_filter("x>=0.5", 1)).tolist() == [True, False, False, False]
    assert passes(table, parse_filter("x<0.5", 1)).tolist() == [False, False, False, True]


def test_candidates_are_pure_functions_of_the_row_seed():
    seeds = np.array([0, 1, 2**62, 12345], dtype=np.int64)
    assert np.array_equal(candidate_seed(seeds, 0), seeds)  # candidate 0 is the ungated row
    first, again = candidate_seed(seeds, 1), candidate_seed(seeds[::-1].copy(), 1)[::-1]
    assert np.array_equal(first, again) and len(set(first) | set(candidate_seed(seeds, 2))) == 8
    assert (first >= 0).all()


def test_gated_rows_are_what_their_candidate_seed_samples(random_checkpoint):
    from gen_jobs.families.dcgan.sampler import Sampler, to_table

    sampler = Sampler(random_checkpoint)

    def sample(batch):
        return to_table(sampler(batch), sampler.recipe)

    ids = np.arange(40, dtype=np.int64)
    batch = {"id": ids, "seed": ids * 7919}
    plain = sample(batch)
    threshold = float(np.quantile(plain.column("confidence").to_numpy(), 0.6))
    out = gated(sample, batch, parse_filter(f"confidence>={threshold}", 3), plain)
    attempts, status = out.column("attempts").to_numpy(), np.array(out.column("status").to_pylist())
    assert out.column("seed").to_pylist() == batch["seed"].tolist()  # the row's seed, whatever candidate won
    assert set(attempts) == {1, 2, 3} and set(status) == {"ok", "rejected"}
    assert (attempts[status == "rejected"] == 3).all()
    assert (out.column("confidence").to_numpy()[status == "ok"] >= threshold).all()
    first = attempts == 1
    assert out.column("image").to_pylist() == [row if f else out_row for row, out_row, f in
                                                zip(plain.column("image").to_pylist(), out.column("image").to_pylist(), first)]
    for i in np.flatnonzero(attempts > 1)[:5]:  # a retried row is exactly its candidate's sample
        again = sample({"id": ids[i: i + 1], "seed": candidate_seed(batch["seed"][i: i + 1], int(attempts[i]) - 1)})
        assert again.column("image").to_pylist() == out.column("image").to_pylist()[i: i + 1]


def shard_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def test_the_gate_keeps_the_dataset_contract(ray_cluster, random_checkpoint, tmp_path):
    ungated = GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path / "plain"), num_samples=240,
                           rows_per_shard=60, workers=2)
    generate(ungated, log=lambda _: None)
    confidence = read_rows(tmp_path / "plain", columns=["confidence"]).column("confidence").to_numpy()
    expr = f"confidence>={np.quantile(confidence, 0.6):.4f}"  # about 40% pass at the first try

    lines = []
    gated_args = ungated.model_copy(update={"out": str(tmp_path / "two"), "filter": expr, "max_attempts": 3})
    manifest = generate(gated_args, log=lines.append)
    c = manifest.gate_counts
    assert c["requested"] == 240 and c["accepted_first_try"] + c["accepted_later"] + c["rejected"] == 240
    assert min(c["accepted_first_try"], c["accepted_later"], c["rejected"]) > 0, c
    assert any(line.startswith("filter confidence>=") and "of 240 rows passed at the first try" in line
               and f"{c['rejected']} rejected" in line for line in lines), lines
    assert problems(str(tmp_path / "two"))[0] == []
    table = read_rows(tmp_path / "two")
    assert int((np.array(table.column("status").to_pylist()) == "rejected").sum()) == c["rejected"]
    plain = read_rows(tmp_path / "plain")
    first = table.column("attempts").to_numpy() == 1
    assert np.array(table.column("image").to_pylist(), dtype=object)[first].tolist() == \
        np.array(plain.column("image").to_pylist(), dtype=object)[first].tolist()  # first tries are the ungated rows

    one = gated_args.model_copy(update={"out": str(tmp_path / "one"), "workers": 1})
    generate(one, log=lambda _: None)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    (tmp_path / "one" / "part-00002.parquet").unlink()
    generate(one.model_copy(update={"resume": True}), log=lambda _: None)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    assert json.loads((tmp_path / "one" / "_manifest.json").read_text())["gate_counts"] == c

    with pytest.raises(UserError, match=r"filter \(made with confidence>="):
        generate(one.model_copy(update={"resume": True, "filter": "confidence>=0.1"}), log=lambda _: None)


def test_a_filter_on_a_figure_the_rows_lack_is_one_clear_line(ray_cluster, random_checkpoint, tmp_path):
    result = run_cli("generate", "--checkpoint", random_checkpoint, "--out", str(tmp_path / "x"), "--num-samples", "10",
                     "--filter", "perplexity<=40")
    assert result.returncode == 2
    assert "error: --filter: 'perplexity' is not a per-row figure of dcgan rows; use one of: confidence, label" in result.stderr
    result = run_cli("generate", "--checkpoint", random_checkpoint, "--out", str(tmp_path / "y"), "--num-samples", "10",
                     "--max-attempts", "3")
    assert result.returncode == 2 and "--max-attempts sets how often a row may retry --filter" in result.stderr
