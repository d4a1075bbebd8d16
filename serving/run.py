"""Serve models over HTTP on this machine (or the cluster in RAY_ADDRESS) until Ctrl-C.

    raygen serve [CONFIG] [--model NAME=CHECKPOINT_URI ...] [--host 127.0.0.1] [--port 8000] [--allow-no-key]
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
import time
from pathlib import Path

import yaml
from pydantic import Field

from gen_jobs.cli_args import ArgumentParser, run_main, validate_args
from gen_jobs.core import registry
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import StrictModel

DEMO_OUT = "./out"
DEMO_RUNS = "./out/runs"  # where `raygen train` writes by default


class ServeArgs(StrictModel):
    config: str | None = None
    model: list[str] = []
    host: str = "127.0.0.1"
    port: int | None = Field(None, gt=0, lt=65536)
    allow_no_key: bool = False


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="raygen serve", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", help="Serve config YAML (e.g. serving/config.yaml)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT_URI", help="serve a checkpoint as NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's, else 8000)")
    p.add_argument("--allow-no-key", action="store_true",
                   help="serve a non-loopback --host without an API key (RAYGEN_API_KEY): anyone who reaches it may use it")
    return p


def parse_model(spec: str) -> dict:
    name, sep, uri = spec.partition("=")
    if not sep or not name or not uri:
        raise UserError(f"--model {spec!r}: write NAME=CHECKPOINT_URI, e.g. --model digits=out/runs/dcgan_digits")
    return {"name": name, "checkpoint": uri}


def newest_checkpoint(out: str, recipe_name: str) -> str | None:
    """The newest checkpoint of a run named `recipe_name` in OUT/runs or OUT/demo-*/runs, or None."""
    from gen_jobs.core import storage

    found = []
    for uri in storage.list_files(out, recursive=True):
        parts = uri.split("/")
        if parts[-1] == "model.safetensors" and len(parts) >= 4 and parts[-3] == recipe_name and parts[-4] == "runs" \
                and parts[-2].startswith("checkpoint_"):
            found.append("/".join(parts[:-1]))
    return max(found, key=lambda c: c.rsplit("/", 1)[-1]) if found else None  # checkpoint_<timestamp> sorts by time


def demo_models(log=print) -> list[dict]:
    """The demo recipes' newest checkpoints under ./out: those a plain `raygen demo` runs trained first where
    missing, the others (`raygen demo --family diffusion`) served when there is one."""
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.train import train

    models = []
    demos = [registry.get(f).demo for f in registry.names()]
    for demo in [d for d in demos if d is not None]:
        recipe_name = demo.recipe
        uri = newest_checkpoint(DEMO_OUT, recipe_name)
        if uri is None and not demo.in_default_run:
            continue
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

        data = read_config(document, args.config).model_dump(exclude_unset=True)  # unset num_cpus: shared out
        if isinstance(document, dict):
            port = (document.get("http_options") or {}).get("port")
    return data, port


def share_cpus(config, cluster_cpus: float):
    """`config` with each model whose num_cpus was not chosen given an equal share of the cluster's CPUs
    (at most 1 per replica), so that every replica of the default `raygen serve` fits the machine
    it runs on (four demo models on 2 CPUs: 0.5 each) instead of waiting for CPUs that never come."""
    unset = [m for m in config.models if "num_cpus" not in m.model_fields_set]
    if not unset:
        return config
    chosen = sum(m.num_cpus * max(1, m.autoscaling.min_replicas) for m in config.models if m not in unset)
    replicas = sum(max(1, m.autoscaling.min_replicas) for m in unset)
    share = min(1.0, max(0.1, int((cluster_cpus - chosen) / replicas * 10) / 10))  # rounded down to tenths: the shares fit
    models = [m.model_copy(update={"num_cpus": share}) if m in unset else m for m in config.models]
    return config.model_copy(update={"models": models})


def _state(status) -> str:
    return str(getattr(status, "value", status))


def unplaced(status, config, resources: dict) -> list[str]:
    """One line per model that the cluster has no room for: what its replicas need, what the cluster
    has, what to change. A replica that is only slow to load says nothing: a line needs the app to ask
    for more than the cluster has, or Serve to report the model's replicas as not yet scheduled."""
    app = status.applications.get("raygen")
    demand = sum(m.num_cpus * max(1, m.autoscaling.min_replicas) for m in config.models)
    lines = []
    for model in config.models:
        deployment = app.deployments.get(f"model-{model.name}") if app else None
        if deployment is None or _state(deployment.status) == "HEALTHY":
            continue
        if demand <= resources.get("CPU", 0) and "to be scheduled" not in (deployment.message or ""):
            continue
        needs = f"{model.num_cpus:g} CPU" + (f" and {model.gpu:g} GPU" if model.gpu else "")
        lines.append(f"model {model.name} is not placed: a replica needs {needs}, the models need {demand:g} CPUs in "
                     f"all and the cluster has {resources.get('CPU', 0):g} ({resources.get('GPU', 0):g} GPUs): "
                     "lower num_cpus in a Serve config, serve fewer models, or add nodes")
    return lines


def refuse_open_server(args: ServeArgs, config) -> None:
    """A server other machines can reach needs an API key, unless --allow-no-key says otherwise."""
    import ipaddress
    import os

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        loopback = False
    if not loopback and not os.environ.get(config.api_key_env) and not args.allow_no_key:
        raise UserError(f"--host {args.host} serves other machines, and no API key is set: export "
                        f"{config.api_key_env}=<a secret> (clients send Authorization: Bearer <it>), or pass "
                        "--allow-no-key if anyone who reaches this port may use the models")


def serve_until_stopped(config, host: str, port: int, log=print, placement_wait_s: float = 15.0) -> None:
    """Deploy, say when every model answers, and stop on SIGINT/SIGTERM at any point (also while deploying)."""
    import ray
    from ray import serve
    from ray.serve.api import RunTarget

    from gen_jobs.core.cluster import connect
    from serving.app import build_app

    app = build_app(config)  # checks every checkpoint before Ray starts
    connect()
    shared = share_cpus(config, ray.cluster_resources().get("CPU", 1.0))
    if shared != config:
        config, app = shared, build_app(shared)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    quiet = {"log_level": "WARNING"}  # per-request access lines stay in Ray's log folder, not on the console
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    try:
        # Not Serve's blocking wait: it would wait forever, deaf to Ctrl-C, for a replica that cannot be placed.
        serve.run_many([RunTarget(target=app, name="raygen", route_prefix="/", logging_config=quiet)],
                       wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        if not wait_until_running(config, stop, log, placement_wait_s):
            return
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        log(f"serving on http://{shown}:{port}")
        log(f"playground: http://{shown}:{port}/ (open it in a browser)")
        log(f"models: {', '.join(f'{m.name} ({m.num_cpus:g} CPU)' for m in config.models)}; Ctrl-C stops")
        stop.wait()
    finally:
        log("stopping Serve")
        shut_down_serve(log)


def serve_is_running() -> bool:
    """Whether Serve's controller runs on the cluster this process is connected to."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:  # no controller: Serve and every replica are gone
        return False


def shut_down_serve(log, timeout_s: float = 120.0) -> None:
    """serve.shutdown(), until Serve's controller is gone. One call is not enough on a cluster this process
    only joined: it gives up quietly after 30 s, or when the controller is slow to answer its 5 s liveness
    check (busy placing a replica that cannot be placed, say), and the app would keep running, holding its
    CPUs, after the command that started it has exited."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        serve.shutdown()
        if not serve_is_running():
            return
        if time.monotonic() > deadline:
            log(f"Serve did not stop within {timeout_s:g} s and still runs on the cluster: "
                "stop it with `serve shutdown -y` (RAY_ADDRESS set to this cluster)")
            return
        time.sleep(1.0)


def wait_until_running(config, stop: threading.Event, log, placement_wait_s: float) -> bool:
    """Wait for the app to run; say in words what keeps a replica from being placed. False if stopped first."""
    import ray
    from ray import serve

    started, said = time.monotonic(), False
    while not stop.wait(0.5):
        status = serve.status()
        app = status.applications.get("raygen")
        state = _state(app.status) if app else "NOT_STARTED"
        if state == "RUNNING":
            return True
        if state == "DEPLOY_FAILED":
            raise UserError(f"the Serve app failed to deploy: {app.message.strip()[:2000]}")
        if not said and time.monotonic() - started > placement_wait_s:
            for line in unplaced(status, config, ray.cluster_resources()):
                log(f"waiting: {line}")
                said = True
    return False


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        from serving.config import read_config

        args = validate_args(ServeArgs, vars(parser().parse_args(argv)))
        data, config_port = load_config(args)
        data.setdefault("models", []).extend(parse_model(spec) for spec in args.model)
        if not data["models"]:
            data["models"] = demo_models()
        config = read_config(data, "the serve arguments")
        refuse_open_server(args, config)
        serve_until_stopped(config, args.host, args.port or config_port or 8000, log=lambda line: print(line, flush=True))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
