"""Style training trials: each trained in-process for the demo's budget, then measured on photos it never saw.

    .venv/bin/python bench/style_trials.py [--trial NAME ...] [--steps 144] [--grid out/style-trials.png]

A trial is the default recipe with some settings changed (TRIALS). Each is trained
on one process for --steps steps of the demo's global batch (2 workers x 4 crops:
3 epochs of 384 crops are 144 steps, what the demo trained when the trials ran), then stylises
gen_jobs.families.style.colour_casts' tinted crops of a held-out photo and the
demo's held-out crops, and prints, per style:

    <trial> <style>: palette spread <P> of the inputs', texture <T> of the input's, edges <E>, blotch <B>
        (casts); blotch <B> on the demo's crops, <N> of <M> over the goal; trained in <S> s

--grid writes every trial's outputs on two demo crops, one row per trial and style.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

MATCH = ["model.colour_match=true"]
CENTRED = MATCH + ["loss.centred=true"]
TRIALS: dict[str, list[str]] = {  # each measured in docs/families/style.md's table
    "default": ["model.colour_match=false", "loss.centred=false", "loss.blotch_weight=0", "loss.colour_weight=4"],
    "match": MATCH + ["loss.centred=false", "loss.blotch_weight=0", "loss.colour_weight=4"],
    "match-centred": CENTRED + ["loss.blotch_weight=0", "loss.colour_weight=4"],
    "match-centred-lr5": CENTRED + ["loss.blotch_weight=0", "loss.colour_weight=4", "train.lr=0.005"],
    "match-centred-colour0": CENTRED + ["loss.blotch_weight=0", "loss.colour_weight=0"],
    "match-centred-colour0-4scales": CENTRED + ["loss.blotch_weight=0", "loss.colour_weight=0",
                                                "loss_network.channels=[32,64,128,256]"],
    "match-centred-colour0-k357": CENTRED + ["loss.blotch_weight=0", "loss.colour_weight=0",
                                             "loss_network.kernel_sizes=[3,5,7]"],
    "match-centred-detail4": CENTRED + ["loss.blotch_weight=0", "loss.colour_weight=4", "model.detail_only=4"],
    "match-centred-detail2": CENTRED + ["loss.blotch_weight=0", "loss.colour_weight=4", "model.detail_only=2"],
    "match-centred-blotch20": CENTRED + ["loss.blotch_weight=20", "loss.colour_weight=4"],
    "match-centred-blotch40": CENTRED + ["loss.blotch_weight=40", "loss.colour_weight=4"],
    "match-centred-blotch100": CENTRED + ["loss.blotch_weight=100", "loss.colour_weight=4"],
    "match-centred-blotch100-detail2": CENTRED + ["loss.blotch_weight=100", "loss.colour_weight=4", "model.detail_only=2"],
    "match-centred-blotch20-style3": CENTRED + ["loss.blotch_weight=20", "loss.colour_weight=4", "loss.style_weight=3"],
    "recipe": [],  # style_sample as it is (its 4 epochs are 192 steps: --steps 192)
}


def train(overrides: list[str], steps: int, folder: str) -> float:
    """Train the default recipe with `overrides` for `steps` steps of 8 crops; save to `folder`; seconds taken."""
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.style.training import TrainingTask
    from gen_jobs.training.harness import Workers

    recipe = load_recipe("style_sample", ["train.batch_size=8", *overrides])
    torch.manual_seed(recipe.train.seed)
    start = time.perf_counter()
    task = TrainingTask(recipe, TrainingTask.prepare(recipe), Workers(0, 1, torch.device("cpu")))
    history = [task.train_step(torch.randint(task.num_examples, (recipe.train.batch_size,))) for _ in range(steps)]
    seconds = time.perf_counter() - start
    first, last = (np.mean([[h[k] for k in sorted(h)] for h in part], axis=0) for part in (history[:10], history[-10:]))
    print(f"  losses {sorted(history[0])}: first 10 steps {np.round(first, 3)}, last 10 {np.round(last, 3)}")
    task.save(__import__("pathlib").Path(folder), {"epoch": 1, "metrics": {}})
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trial", action="append", choices=sorted(TRIALS), help="default: every trial")
    p.add_argument("--steps", type=int, default=144)
    p.add_argument("--grid", default=None, help="a PNG of every trial's outputs on two demo crops")
    args = p.parse_args()

    from gen_jobs.families.style.colour_casts import cast_figures, tinted_crops
    from gen_jobs.families.style.data import held_out_crops
    from gen_jobs.families.style.quality import BLOTCH_GOAL
    from gen_jobs.families.style.sampler import Sampler

    casts = tinted_crops()
    demo = held_out_crops(8, 256, seed=7).transpose(0, 2, 3, 1)  # the demo's crops (write_demo_inputs), 8 of them
    rows = []
    for name in args.trial or list(TRIALS):
        with tempfile.TemporaryDirectory() as folder:
            seconds = train(TRIALS[name], args.steps, folder)
            sampler = Sampler(folder)
            figures = cast_figures(sampler, casts)
            for k, style in enumerate(sampler.recipe.styles):
                out = sampler({"seed": np.zeros(len(demo), np.int64), "input": list(demo), "label": np.full(len(demo), k)})
                blotches = np.asarray(out["blotch"], dtype=np.float64)
                f = figures[style.name]
                print(f"{name} {style.name}: palette spread {f['palette_spread']:.2f} of the inputs', texture "
                      f"{f['texture_to_style']:.2f} of the input's, edges {f['edge_correlation']:.2f}, blotch "
                      f"{f['blotch']:.3f} (casts); blotch {np.nanmean(blotches):.3f} on the demo's crops, "
                      f"{int((blotches > BLOTCH_GOAL).sum())} of {len(demo)} over the goal; trained in {seconds:.0f} s",
                      flush=True)
                rows.append([demo[0], np.stack(out["image"])[0], demo[3], np.stack(out["image"])[3]])
    if args.grid:
        from gen_jobs.quality.figures import titled_grid_png

        with open(args.grid, "wb") as f:
            f.write(titled_grid_png(rows, ["input", "output", "input", "output"]))


if __name__ == "__main__":
    main()
