"""The embedded demo: train each model family on its bundled data, generate, verify, score.

    raygen demo [--family dcgan|gpt|music|style|diffusion] [--out ./out] [--workers 2] [--num-samples N]
    python -m gen_jobs.demo

Without --family it runs dcgan, gpt, music and style, one after the other, in about
15 minutes on 2 CPUs; diffusion (about 6 minutes more of training) runs when named. Each run writes
into a new folder of its own, OUT/demo-<YYYYmmdd-HHMMSS>/, and deletes nothing
(earlier demos and `raygen train` runs under OUT/runs stay as they are):
    runs/<recipe>/            Ray Train run with its checkpoints
    dcgan_digits/             10,000 labelled digit images: part-*.parquet + _manifest.json
    dcgan_digits_grid.png     10x10 samples from that dataset, one row per label
    gpt_pydoc/                1,000 text samples from the GPT trained on Python's docs
    music_chorales/           200 pieces (MIDI) from the model trained on Bach chorales, and beside it
    music_chorales_<id>.mid/.wav, music_chorales_piano_roll.png   the first three pieces, to play and see
    style_inputs/             32 crops of bundled photos the style network never trained on
    style_sample/             those crops in each of its 2 styles (64 rows), and beside it
    style_sample_before_after.png   inputs (left) and their stylised versions, one column per style
    diffusion_digits/, diffusion_digits_grid.png   (--family diffusion) 10,000 digits from the diffusion model
`raygen serve` with no arguments serves the newest demo's checkpoints.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from pydantic import Field

from gen_jobs.cli_args import ArgumentParser, run_main, validate_args
from gen_jobs.core import registry, storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import StrictModel


def demo_families(default_run: bool = False) -> list[str]:
    """The families with demo defaults, in registry order (those a plain `raygen demo` runs: `default_run`)."""
    demos = {name: registry.get(name).demo for name in registry.names()}
    return [name for name, demo in demos.items() if demo is not None and (demo.in_default_run or not default_run)]


class DemoArgs(StrictModel):
    family: str | None = None
    out: str = "./out"
    workers: int = Field(2, gt=0)
    num_samples: int | None = Field(None, gt=0)
    set: list[str] = []


def read_table(out: str, columns: list[str]):
    """Columns of a whole dataset, in id order."""
    from gen_jobs.data.manifest import read_manifest, read_shards

    return read_shards(out, read_manifest(out).shards, columns)


def new_demo_folder(out: str) -> str:
    """OUT/demo-<YYYYmmdd-HHMMSS>: a name no earlier run used (the demo deletes nothing)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = storage.join(out, f"demo-{stamp}")
    n = 2
    while storage.exists(folder):
        folder = storage.join(out, f"demo-{stamp}-{n}")
        n += 1
    return folder


def run_family(family: str, args: DemoArgs, log=print) -> dict:
    """Train, generate, verify; returns what to report (paths, quality, timings)."""
    from gen_jobs.core.family import load_attribute
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.generate import GenerateArgs, generate
    from gen_jobs.train import train
    from gen_jobs.verify import problems

    demo = registry.get(family).demo
    timings = {}
    recipe = load_recipe(demo.recipe, args.set)
    runs = storage.join(args.out, "runs")
    if storage.exists(storage.join(runs, recipe.name)):  # never continue or delete someone's run
        raise UserError(f"{storage.join(runs, recipe.name)} already exists; the demo writes only into a new folder")
    log(f"[{family} 1/3] training {recipe.name} on {args.workers} Ray Train workers ({recipe.train.epochs} epochs)")
    started = time.perf_counter()
    ckpt = train(recipe, runs, recipe.name, args.workers, gpu=False)
    timings["train"] = time.perf_counter() - started

    dataset = storage.join(args.out, recipe.name)
    num_samples = args.num_samples or demo.num_samples
    started = time.perf_counter()
    if demo.input:  # a family that transforms images: every input in every style
        source = load_attribute(demo.input)(args.out)
        per_input = recipe.row_classes() or 1
        log(f"[{family} 2/3] transforming the images in {source} ({per_input} outputs each, one per style) "
            f"with {args.workers} Ray Data workers")
        job = GenerateArgs(checkpoint=ckpt, out=dataset, input=source, samples_per_input=per_input,
                           labels=",".join(str(k) for k in range(per_input)), workers=args.workers)
    else:
        log(f"[{family} 2/3] generating {num_samples:,} samples with {args.workers} Ray Data workers")
        job = GenerateArgs(checkpoint=ckpt, out=dataset, num_samples=num_samples, workers=args.workers)
    manifest = generate(job, log=log)
    timings["generate"] = time.perf_counter() - started

    log(f"[{family} 3/3] verifying shards against the manifest")
    bad, summary = problems(dataset)
    if bad:
        raise UserError(f"the demo dataset failed verification: {'; '.join(bad)}")
    log(summary)
    result = {"family": family, "checkpoint": ckpt, "dataset": dataset, "quality": manifest.quality or {}, "timings": timings}
    if demo.show == "grid":
        result["grid"] = write_grid(dataset, storage.join(args.out, f"{recipe.name}_grid.png"))
    elif demo.show == "text":
        result["examples"] = read_table(dataset, ["text"]).column("text").to_pylist()[:3]
    if demo.examples:
        result["files"] = load_attribute(demo.examples)(dataset, args.out, recipe.name)
    return result


def write_grid(dataset: str, uri: str) -> str:
    from gen_jobs.data.images import decode_png, labelled_grid, png_bytes

    table = read_table(dataset, ["label", "image"])
    labels = np.asarray(table.column("label").to_pylist())
    # Decode only what the grid shows (the first 10 of each label), not every row of the dataset.
    shown = np.sort(np.concatenate([np.flatnonzero(labels == k)[:10] for k in np.unique(labels)]))
    images = np.stack([decode_png(cell["bytes"]) for cell in table.column("image").take(shown).to_pylist()])
    grid = labelled_grid(images, labels[shown], per_label=10)
    if grid is None:
        raise UserError("the dataset has fewer than 10 images of some label for the grid")
    storage.write_bytes_atomic(uri, png_bytes(grid))
    return uri


def report(result: dict) -> None:
    t = result["timings"]
    print()
    print(f"{result['family']}:")
    print(f"  checkpoint:  {result['checkpoint']}")
    print(f"  dataset:     {result['dataset']}  (verified)")
    print(f"  card:        {storage.join(result['dataset'], 'README.md')}  (health, samples, figures, training curves)")
    if "grid" in result:
        print(f"  sample grid: {result['grid']}  (one row per label 0-9)")
    for n, text in enumerate(result.get("examples", []), start=1):
        print(f"  sample {n}:    " + "\n               ".join(sample_lines(text)))
    for uri in result.get("files", []):
        print(f"  example:     {uri}")
    print(f"  quality:     {result['quality'].get('summary', 'n/a')}")
    for warning in result["quality"].get("warnings", []):
        print(f"  warning:     {warning}")
    print(f"  time:        train {t['train']:.0f} s, generate and score {t['generate']:.0f} s")


def sample_lines(text: str, width: int = 100, lines: int = 4) -> list[str]:
    """A text sample as a person reads it: its own lines (blank ones dropped), each cut to `width`, at most `lines`."""
    shown = [line.rstrip()[:width] for line in text.splitlines() if line.strip()]
    if not shown:
        return ["(empty: the model ended the text at once)"]
    return shown[:lines] + (["..."] if len(shown) > lines else [])


def open_first(results: list[dict]) -> str:
    """The closing summary: per family, the one file to look at (or listen to) first, then its card."""
    lines = ["", "open first:"]
    for result in results:
        files = [result["grid"]] if "grid" in result else []
        files += [f for f in result.get("files", []) if f.endswith(".wav")][:1]
        files += [f for f in result.get("files", []) if f.endswith(".png")][:1]
        card = storage.join(result["dataset"], "README.md")
        lines.append(f"  {result['family']:<6} {files[0] if files else card}")
        if files:
            lines.append(f"  {'':<6} {card}  (the dataset card: health, figures, training curves)")
        if result["quality"].get("warnings"):
            lines.append(f"  {'':<6} {len(result['quality']['warnings'])} warning(s): see the card's Health section")
    lines += ["", "try the models over HTTP: raygen serve   (serves this demo's checkpoints)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        p = ArgumentParser(prog="raygen demo", description=__doc__.split("\n")[0])
        everyday = demo_families(default_run=True)
        named_only = [name for name in demo_families() if name not in everyday]
        p.add_argument("--family", choices=demo_families(),
                       help=f"run one family (default: {', '.join(everyday)}, one after the other"
                            + (f"; {', '.join(named_only)} only when named)" if named_only else ")"))
        p.add_argument("--out", default="./out", help="output folder: path or s3:// URI")
        p.add_argument("--workers", type=int, default=2, help="Ray Train and Ray Data workers")
        p.add_argument("--num-samples", type=int, help="samples to generate (default: 10,000 images, 1,000 texts, 200 pieces)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
        args = validate_args(DemoArgs, vars(p.parse_args(argv)))
        if args.set and not args.family:
            raise UserError(f"--set overrides one recipe: pass --family ({' or '.join(demo_families())}) with it")
        chosen = [args.family] if args.family else everyday
        folder = new_demo_folder(args.out)
        run_args = args.model_copy(update={"out": folder})
        started = time.perf_counter()
        results = []
        for n, family in enumerate(chosen, start=1):
            print(f"=== demo {n}/{len(chosen)}: {family}", flush=True)
            results.append(run_family(family, run_args))
            report(results[-1])
        print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; everything is under {folder}")
        print(open_first(results))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
