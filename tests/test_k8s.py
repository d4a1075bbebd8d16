"""k8s/ checked offline, the way the API server and KubeRay would check it, plus against the code.

- KubeRay kinds validate against the KubeRay v1.7.0 CRDs in ../shared/kuberay-crds,
  strictly: a field the CRD does not define is an error (as with `kubectl apply
  --validate=strict`). Built-in kinds, every pod template and all metadata validate
  with kubernetes-validate (strict).
- Cross-checks: each RayJob entrypoint is a raygen job that parses its arguments and
  reads what another job writes; RayService's Serve config is serving/config.yaml plus
  a fixed list of cluster changes; Ray versions agree everywhere; GPU groups request
  GPUs; autoscaling and Ray token authentication are on; secrets are never inline.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import REPO

K8S = REPO / "k8s"
CRDS = Path(os.environ.get("RAYGEN_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))
KUBERNETES_VERSION = "1.33"  # the oldest Kubernetes the manifests promise to work on
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_VERSION = re.search(r"ray\[[^]]*\]==([\d.]+)", " ".join(PYPROJECT["project"]["dependencies"])).group(1)
RAYGEN_VERSION = PYPROJECT["project"]["version"]
IMAGE = f"raygen:{RAYGEN_VERSION}-ray{RAY_VERSION}-py311-gpu"

# The only ways the RayService's Serve config may differ from serving/config.yaml.
CLUSTER_CHANGES = {
    ("http_options", "host"): "0.0.0.0",  # reachable by the Kubernetes Service, not loopback only
    ("applications", 0, "args", "models", 0, "checkpoint"): "s3://raygen/runs/dcgan_digits",
    ("applications", 0, "args", "models", 1, "checkpoint"): "s3://raygen/runs/gpt_pydoc",
    ("applications", 0, "args", "models", 1, "gpu"): True,
}

# The job modules RayJobs may run, with their argument parser and pydantic arguments.
JOB_ARGUMENTS = {"gen_jobs.train": "TrainArgs", "gen_jobs.generate": "GenerateArgs"}


def load_manifests() -> list[tuple[str, dict]]:
    """(file name, document) for every YAML document under k8s/ except kustomization.yaml."""
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


MANIFESTS = load_manifests()
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


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.Validator]:
    if not CRDS.is_dir():
        pytest.skip(
            f"KubeRay CRDs not found at {CRDS}: put ray.io_rayclusters.yaml, ray.io_rayjobs.yaml and "
            "ray.io_rayservices.yaml from https://github.com/ray-project/kuberay/tree/v1.7.0/ray-operator/config/crd/bases "
            "there, or point RAYGEN_KUBERAY_CRDS at them"
        )
    validators = {}
    for path in CRDS.glob("ray.io_*.yaml"):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # C parser: 60k lines
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    return validators


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
        assert any(source.get("secretRef", {}).get("name") == "raygen-s3" for source in container.get("envFrom", []))
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
    module = importlib.import_module(module_name)
    namespace = module.parser().parse_args(argv)  # exits (SystemExit) on an unknown flag
    return module_name, getattr(module, JOB_ARGUMENTS[module_name]).model_validate(vars(namespace))


@pytest.mark.parametrize("module", sorted({entrypoint(doc)[0] for _, doc in RAY_JOBS}))
def test_entrypoint_modules_answer_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("name, doc", RAY_JOBS, ids=ids(RAY_JOBS))
def test_ray_jobs_parse_their_arguments_and_fit_their_cluster(name, doc):
    from gen_jobs.recipes import load_recipe

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
    served = [m["checkpoint"] for m in serve_config()["applications"][0]["args"]["models"]]
    assert read and served
    assert set(read) <= trained and set(served) <= trained, (read, served, trained)


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
    gpu_replicas = sum(m.autoscaling.max_replicas for m in models if m.gpu)
    gpu_groups = [g for g in cluster_spec(RAY_SERVICE)["workerGroupSpecs"] if gpus_of(g)]
    assert gpu_replicas and sum(g["maxReplicas"] for g in gpu_groups) >= gpu_replicas


# ------------------------------------------------------------------ versions, image, kustomization


def test_ray_version_agrees_in_pyproject_dockerfile_manifests_and_cluster_config():
    base = re.search(r"^FROM (\S+)", (K8S / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert base == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    for _, doc in KUBERAY:
        assert cluster_spec(doc)["rayVersion"] == RAY_VERSION
        assert {c["image"] for c in containers(doc)} == {IMAGE}  # the tag names the same Ray
    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    assert aws["docker"]["image"] == base


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
