"""Serve models over HTTP on this machine (or the cluster in RAY_ADDRESS) until Ctrl-C.

    raygen serve [CONFIG] [--model NAME=CHECKPOINT_URI ...] [--host 127.0.0.1] [--port 8000]
    python -m serving.run ...

With no CONFIG and no --model it serves the demo recipes' newest checkpoints
under ./out (from `raygen demo`, in out/demo-*/runs, or `raygen train`, in
out/runs), training a missing one first. CONFIG
is a Serve config file like serving/config.yaml (or a bare app config with
`models:`); each --model adds a model served under NAME, its family read from
the checkpoint (a checkpoint folder or a Ray Train run folder, path or s3://).
Prints `serving on http://HOST:PORT` once every model answers, then the
playground's address (serving.playground: a page to try every model), and shuts
Serve down cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import yaml
from pydantic import Field

from gen_jobs.cli_args import ArgumentParser, run_main, validate_args
from gen_jobs.errors import UserError
from gen_jobs.recipes import StrictModel

DEMO_OUT = "./out"
DEMO_RUNS = "./out/runs"  # where `raygen train` writes by default


class ServeArgs(StrictModel):
    config: str | None = None
    model: list[str] = []
    host: str = "127.0.0.1"
    port: int | None = Field(None, gt=0, lt=65536)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="raygen serve", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", help="Serve config YAML (e.g. serving/config.yaml)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT_URI", help="serve a checkpoint as NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's, else 8000)")
    return p


def parse_model(spec: str) -> dict:
    name, sep, uri = spec.partition("=")
    if not sep or not name or not uri:
        raise UserError(f"--model {spec!r}: write NAME=CHECKPOINT_URI, e.g. --model digits=out/runs/dcgan_digits")
    return {"name": name, "checkpoint": uri}


def newest_checkpoint(out: str, recipe_name: str) -> str | None:
    """The newest checkpoint of a run named `recipe_name` in OUT/runs or OUT/demo-*/runs, or None."""
    from gen_jobs import storage

    found = []
    for uri in storage.list_files(out, recursive=True):
        parts = uri.split("/")
        if parts[-1] == "model.safetensors" and len(parts) >= 4 and parts[-3] == recipe_name and parts[-4] == "runs" \
                and parts[-2].startswith("checkpoint_"):
            found.append("/".join(parts[:-1]))
    return max(found, key=lambda c: c.rsplit("/", 1)[-1]) if found else None  # checkpoint_<timestamp> sorts by time


def demo_models(log=print) -> list[dict]:
    """The demo recipes' newest checkpoints under ./out, trained first where missing."""
    from gen_jobs import families
    from gen_jobs.recipes import load_recipe
    from gen_jobs.train import train

    models = []
    demos = [families.get(f).demo for f in families.names()]
    for recipe_name in [d.recipe for d in demos if d is not None]:
        uri = newest_checkpoint(DEMO_OUT, recipe_name)
        if uri is None:
            log(f"no checkpoint of {recipe_name} under {DEMO_OUT}: training it first (as `raygen demo` does)")
            recipe = load_recipe(recipe_name)
            uri = train(recipe, DEMO_RUNS, recipe.name, workers=2, gpu=False)
        models.append({"name": recipe_name, "checkpoint": uri})  # served under its demo recipe's name
    return models


def load_config(args: ServeArgs) -> tuple[dict, int | None]:
    """The app config's mapping, and the port the config file asks for (if any)."""
    data, port = {"models": []}, None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise UserError(f"config {args.config} does not exist: pass a Serve config file such as serving/config.yaml")
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{args.config} is not valid YAML: {e}") from e
        from serving.config import read_config

        data = read_config(document, args.config).model_dump()
        if isinstance(document, dict):
            port = (document.get("http_options") or {}).get("port")
    return data, port


def serve_until_stopped(config, host: str, port: int) -> None:
    from ray import serve

    from gen_jobs.cluster import connect
    from serving.app import build_app

    app = build_app(config)  # checks every checkpoint before Ray starts
    connect()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    quiet = {"log_level": "WARNING"}  # per-request access lines stay in Ray's log folder, not on the console
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    try:
        serve.run(app, name="raygen", route_prefix="/", blocking=False, logging_config=quiet)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"serving on http://{shown}:{port}", flush=True)
        print(f"playground: http://{shown}:{port}/ (open it in a browser)", flush=True)
        print(f"models: {', '.join(m.name for m in config.models)}; Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        print("stopping Serve", flush=True)
        serve.shutdown()


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        from serving.config import read_config

        args = validate_args(ServeArgs, vars(parser().parse_args(argv)))
        data, config_port = load_config(args)
        data["models"] += [parse_model(spec) for spec in args.model]
        if not data["models"]:
            data["models"] = demo_models()
        config = read_config(data, "the serve arguments")
        serve_until_stopped(config, args.host, args.port or config_port or 8000)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
