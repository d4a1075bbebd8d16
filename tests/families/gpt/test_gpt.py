"""GPT family without Ray: tokenizer, sampler determinism, stop/length, bring-your-own, bad input."""

import json
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import read_rows
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import load_recipe
from gen_jobs.core.seeding import row_seeds
from gen_jobs.data.columns import object_column
from gen_jobs.families.gpt.data import PYDOC, TextDataConfig, load_documents, split_documents
from gen_jobs.families.gpt.model import build_model, save as save_gpt, train_tokenizer
from gen_jobs.families.gpt.sampler import ROW_SETTINGS, Sampler
from gen_jobs.families.lm.decoding import pick_tokens
from gen_jobs.generate import GenerateArgs, plan

TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.n_positions=64", "model.vocab_size=300",
            "model.dropout=0", "sampling.max_new_tokens=16", "train.epochs=1", "generate.batch_size=4"]
# Micro-batches of one row, so dataset rows are computed exactly as lone requests are (the Serve tests).
TINY_GPT_ONE_ROW_BATCHES = [*TINY_GPT, "generate.batch_size=1"]
PROMPTS = ["The", "def f(x):", "A list is", "Exceptions", "", "The with statement is used to", "x"]


@pytest.fixture(scope="module")
def tokenizer():
    recipe = load_recipe("gpt_pydoc", TINY_GPT)
    train, _ = split_documents(load_documents(recipe.data), recipe.data.held_out)
    return train_tokenizer(train, 300)


@pytest.fixture()
def gpt_checkpoint(tokenizer, tmp_path):
    recipe = load_recipe("gpt_pydoc", TINY_GPT)
    torch.manual_seed(0)
    folder = tmp_path / "gpt"
    save_gpt(folder, recipe, build_model(recipe.model), tokenizer, {"epoch": 0})
    return str(folder)


def test_tokenizer_round_trips_text(tokenizer):
    text = "def greet(name):\n    return f'héllo {name}!'  # ünïcode → ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(tokenizer) == 300 and max(ids) < 300
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges learned from the corpus compress it


def test_sampler_row_alone_equals_row_in_a_mixed_batch(gpt_checkpoint):
    sampler = Sampler(gpt_checkpoint)
    ids = np.arange(len(PROMPTS), dtype=np.int64)
    batch = {"id": ids, "seed": row_seeds(3, ids), "prompt": np.array(PROMPTS, dtype=object)}
    together = sampler(batch)
    flips = 0
    for i in range(len(PROMPTS)):
        alone = sampler({k: v[i: i + 1] for k, v in batch.items()})
        flips += alone["text"][0] != together["text"][i]
    assert flips == 0
    assert len(set(together["text"])) > 1


def test_same_seed_same_text_and_finish_reasons(gpt_checkpoint):
    sampler = Sampler(gpt_checkpoint)
    seeds = row_seeds(0, np.arange(6, dtype=np.int64))
    first = sampler({"seed": seeds})
    # the same seeds in reverse order and in pairs: each row's text follows its seed, not its place
    second = [sampler({"seed": seeds[::-1][i: i + 2]})["text"] for i in range(0, 6, 2)]
    assert list(first["text"]) == [t for pair in second for t in pair][::-1]
    assert set(first["finish_reason"]) <= {"stop", "length"}
    assert all(n <= 16 for n in first["num_tokens"])
    assert all(p is None for p in first["prompt"]) and (first["num_prompt_tokens"] == 0).all()


def test_stop_strings_end_samples(gpt_checkpoint):
    recipe = load_recipe("gpt_pydoc", [*TINY_GPT, "sampling.stop=[' ', 'e']", "sampling.temperature=1.5"])
    sampler = Sampler(gpt_checkpoint, recipe=recipe)
    out = sampler({"seed": row_seeds(0, np.arange(8, dtype=np.int64))})
    stopped = [t for t, r in zip(out["text"], out["finish_reason"]) if r == "stop"]
    assert stopped and all(" " not in t and "e" not in t for t in stopped)


def test_pick_tokens_greedy_top_k_and_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    u = torch.tensor([0.99, 0.5])
    assert pick_tokens(logits, u, 0.0, 0, 1.0).tolist() == [1, 0]
    assert pick_tokens(logits, u, 1.0, 1, 1.0).tolist() == [1, 0]  # top_k=1 is greedy
    assert pick_tokens(logits, u, 1.0, 0, 0.01).tolist() == [1, 0]  # a tiny nucleus too
    picks = {int(pick_tokens(logits[:1], torch.tensor([v]), 1.0, 2, 1.0)) for v in np.linspace(0, 0.999, 50)}
    assert picks == {1, 3}  # top-2 of row 0


def test_unconditional_and_prompted_shards(gpt_checkpoint, tmp_path):
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS[:3]}), prompts)
    out = tmp_path / "data"
    args = GenerateArgs(checkpoint=gpt_checkpoint, out=str(out), prompts=str(prompts), samples_per_prompt=2, rows_per_shard=4)
    planned = plan(args)
    assert planned.identity.num_rows == 6
    from test_verify import write_dataset

    write_dataset(planned, str(out))
    table = read_rows(out)
    assert table.column_names == ["id", "seed", "prompt", "text", "num_prompt_tokens", "num_tokens", "perplexity",
                                  "copied_words", "copy", "finish_reason"]
    assert table.column("prompt").to_pylist() == ["The", "The", "def f(x):", "def f(x):", "A list is", "A list is"]
    assert (np.array(table.column("num_prompt_tokens").to_pylist()) > 0).all()


def test_bring_your_own_huggingface_folder(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "byo"
    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    sampler = Sampler(str(folder))
    assert sampler.recipe.family == "gpt" and sampler.recipe.model.n_positions == 64
    out = sampler({"seed": np.array([1, 2]), "prompt": np.array(["Hello", None], dtype=object)})
    assert len(out["text"]) == 2 and out["prompt"][1] is None


def test_per_row_settings_equal_the_same_settings_from_the_recipe(gpt_checkpoint):
    # Serve batches requests with different settings; each row must come out as if
    # its settings had been the recipe's (what a batch job with that recipe writes).
    settings = [
        {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 5, "stop": []},
        {"temperature": 1.3, "top_k": 7, "top_p": 1.0, "max_new_tokens": 12, "stop": []},
        {"temperature": 0.7, "top_k": 0, "top_p": 0.5, "max_new_tokens": 16, "stop": ["e"]},
    ]
    seeds = row_seeds(5, np.arange(3, dtype=np.int64))
    prompts = np.array(PROMPTS[:3], dtype=object)
    mixed = Sampler(gpt_checkpoint)({
        "seed": seeds, "prompt": prompts,
        **{key: object_column([s[key] for s in settings]) for key in ROW_SETTINGS},
    })
    for i, s in enumerate(settings):
        recipe = load_recipe("gpt_pydoc", [*TINY_GPT, *(f"sampling.{k}={json.dumps(v)}" for k, v in s.items())])
        alone = Sampler(gpt_checkpoint, recipe=recipe)({"seed": seeds[i: i + 1], "prompt": prompts[i: i + 1]})
        assert (alone["text"][0], alone["finish_reason"][0]) == (mixed["text"][i], mixed["finish_reason"][i])
    assert mixed["num_tokens"][0] <= 5 and mixed["num_tokens"][1] <= 12


def test_streamed_text_grows_by_prefixes_into_the_final_text(gpt_checkpoint):
    recipe = load_recipe("gpt_pydoc", [*TINY_GPT, "sampling.stop=['in', '\\nUser:']", "sampling.temperature=1.2"])
    sampler = Sampler(gpt_checkpoint, recipe=recipe)
    batch = {"seed": row_seeds(1, np.arange(8, dtype=np.int64))}
    shown = [""] * 8
    for rows in sampler.stream(batch):
        for i, row in enumerate(rows):
            visible = sampler.visible_text(row)
            assert visible.startswith(shown[i]) and "in" not in visible
            shown[i] = visible
    assert shown == list(sampler(batch)["text"])


@pytest.mark.parametrize("override, key", [
    ("sampling.max_new_tokens=0", "sampling.max_new_tokens"),
    ("sampling.max_new_tokens=64", "max_new_tokens"),
    ("sampling.temperature=-0.1", "sampling.temperature"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("sampling.top_p=1.5", "sampling.top_p"),
])
def test_bad_sampling_settings(override, key):
    with pytest.raises(UserError, match=key):
        load_recipe("gpt_pydoc", [*TINY_GPT, override])


def test_long_prompts_truncate_left_or_refuse(gpt_checkpoint):
    long_prompt = "word " * 200
    sampler = Sampler(gpt_checkpoint)
    out = sampler({"seed": np.array([0]), "prompt": np.array([long_prompt], dtype=object)})
    assert out["num_prompt_tokens"][0] == 64 - 16
    strict = load_recipe("gpt_pydoc", [*TINY_GPT, "sampling.long_prompts=error"])
    with pytest.raises(UserError, match="shorten it"):
        Sampler(gpt_checkpoint, recipe=strict)({"seed": np.array([0]), "prompt": np.array([long_prompt], dtype=object)})


def test_bad_prompt_files(gpt_checkpoint, tmp_path):
    def plan_with(path, column="prompt"):
        return plan(GenerateArgs(checkpoint=gpt_checkpoint, out=str(tmp_path / "o"), prompts=str(path), prompt_column=column))

    with pytest.raises(UserError, match="does not exist"):
        plan_with(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"question": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match="no column 'prompt'.*question"):
        plan_with(tmp_path / "p.parquet")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(UserError, match="holds no prompts"):
        plan_with(tmp_path / "empty.parquet")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n{oops\n")
    with pytest.raises(UserError, match="line 2 is not JSON"):
        plan_with(tmp_path / "p.jsonl")


def test_not_a_causal_lm_and_mismatched_tokenizer(gpt_checkpoint, tokenizer, tmp_path):
    from gen_jobs.core.checkpoint import read_recipe

    vit = tmp_path / "vit"
    shutil.copytree(gpt_checkpoint, vit)
    (vit / "recipe.json").unlink()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(UserError, match="not a causal language model"):
        read_recipe(str(vit))

    from transformers import GPT2Config, GPT2LMHeadModel

    small = tmp_path / "small"
    GPT2LMHeadModel(GPT2Config(vocab_size=280, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(small)
    tokenizer.save_pretrained(small)
    with pytest.raises(UserError, match="tokenizer has 300 tokens but the model only 280"):
        Sampler(str(small))


def test_user_corpora_txt_jsonl_parquet_and_s3(s3_server, tmp_path):
    from gen_jobs.core import storage
    from gen_jobs.families.gpt.data import TextDataConfig

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("plain text file")
    (tmp_path / "corpus" / "b.jsonl").write_text(json.dumps({"body": "from jsonl"}) + "\n" + json.dumps({"body": "second"}) + "\n")
    pq.write_table(pa.table({"body": ["from parquet"]}), tmp_path / "corpus" / "c.parquet")
    docs = load_documents(TextDataConfig(source=str(tmp_path / "corpus"), text_column="body"))
    assert docs == ["plain text file", "from jsonl", "second", "from parquet"]
    with pytest.raises(UserError, match="no field 'text'"):
        load_documents(TextDataConfig(source=str(tmp_path / "corpus" / "b.jsonl")))
    storage.write_bytes_atomic("s3://raygen/corpus/x.txt", b"text on s3")
    assert load_documents(TextDataConfig(source="s3://raygen/corpus")) == ["text on s3"]
    with pytest.raises(UserError, match="does not exist"):
        load_documents(TextDataConfig(source=str(tmp_path / "nope")))


def test_a_job_whose_prompts_change_after_planning_fails_in_one_line_and_writes_no_manifest(
        ray_cluster, gpt_checkpoint, tmp_path, capsys):
    from gen_jobs.cli_args import run_main
    from gen_jobs.core.lease import Lease
    from gen_jobs.generate import _generate

    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS}), prompts)
    args = GenerateArgs(checkpoint=gpt_checkpoint, out=str(tmp_path / "data"), prompts=str(prompts), rows_per_shard=2,
                        workers=1)
    planned = plan(args)
    pq.write_table(pa.table({"prompt": PROMPTS[::-1]}), prompts)  # rewritten while the job is queued

    def job() -> None:  # the planned job, run on Ray Data's actor pool as `raygen generate` runs it
        with Lease(args.out) as lease:
            _generate(args, planned, lease, log=lambda _: None)

    assert run_main(job) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after Ray Data's own log lines)
    assert last.startswith(f"error: input {prompts} changed or went away after this job was planned")
    assert not (tmp_path / "data" / "_manifest.json").exists()
    ray, _ = ray_cluster  # the failed job's actors are gone, their CPUs free for what comes next
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) >= 2


def test_text_figures_tell_real_text_from_invented_words_and_loops():
    import random

    from gen_jobs.families.gpt.quality import corpus_pieces, score_texts

    corpus = load_documents(TextDataConfig(source=PYDOC))
    held_out = [" ".join(piece) for piece in corpus_pieces(corpus[::-1], 60, 40)]  # real text, cut like samples
    rng = random.Random(0)
    invented = [" ".join("".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(2, 8))) for _ in range(40))
                for _ in range(60)]
    loops = ["the object is the object is " * 5] * 60
    real, bad, looping = (score_texts(texts, corpus) for texts in (held_out, invented, loops))
    assert real.corpus_word_share > 0.99 and bad.corpus_word_share < 0.5
    assert 0.7 <= real.distinct_2_ratio <= 1.3 and looping.distinct_2_ratio < 0.1
    assert real.warnings() == []
    assert bad.warnings()[0].startswith(f"only {bad.corpus_word_share:.1%} of the words are words of the training corpus")
    assert any("the samples repeat themselves" in w for w in looping.warnings())


@pytest.mark.parametrize("rows", [100, 300])
def test_a_model_that_repeats_one_token_warns_while_corpus_text_does_not(rows):
    """The crippled text model of the warnings' test: every sample one token over and over."""
    from gen_jobs.families.gpt.quality import score_texts

    corpus = load_documents(TextDataConfig())
    stuck = score_texts(["the " * 40] * rows, corpus)
    assert any("the samples repeat themselves" in w and f"in {rows} rows" in w for w in stuck.warnings()), stuck
    words = " ".join(corpus).split()
    step = len(words) // rows
    pieces = [" ".join(words[i * step: i * step + 40]) for i in range(rows)]  # 40-word passages of the corpus itself
    assert score_texts(pieces, corpus).warnings() == []
