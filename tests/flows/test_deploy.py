"""Static checks of the deployment files in deploy/ (fast, no network, no cluster)."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from schemas.config import JobConfig
from tests.fakes import ROOT

DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(DEPLOY.glob("*.yaml")) + sorted(DEPLOY.glob("*.yml"))

CRON_FIELD = r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*"
CRON_RE = re.compile(rf"^{CRON_FIELD}(\s+{CRON_FIELD}){{4}}$")


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def deployments(prefect_yaml) -> dict[str, dict]:
    return {d["name"]: d for d in prefect_yaml["deployments"]}


@pytest.fixture(scope="module")
def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _cluster_specs() -> list[tuple[str, dict]]:
    cluster = _one(DEPLOY / "ray-cluster.yaml", "RayCluster")
    job = _one(DEPLOY / "ray-job.yaml", "RayJob")
    return [("RayCluster", cluster["spec"]), ("RayJob", job["spec"]["rayClusterSpec"])]


def _pod_containers(group: dict) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers, "a group needs at least one container"
    return containers


# --- every file parses -------------------------------------------------------------------

def test_deploy_dir_has_the_expected_files():
    names = {p.name for p in DEPLOY.iterdir()}
    assert {"prefect.yaml", "job.example.yaml", "ray-cluster.yaml", "ray-job.yaml",
            "Dockerfile", "README.md"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_parses_to_mappings(path):
    docs = _docs(path)
    assert docs, f"{path.name} is empty"
    assert all(isinstance(d, dict) for d in docs)


# --- Prefect -------------------------------------------------------------------------------

def test_prefect_yaml_accepted_by_prefect_schema(prefect_yaml):
    models = pytest.importorskip("prefect.cli.deploy._models")
    model = models.PrefectYamlModel.model_validate(prefect_yaml)
    assert model.name == "voxmill"
    assert [d.name for d in model.deployments] == ["nightly-corpus", "adhoc-corpus"]
    for d in model.deployments:
        for item in d.schedules or []:
            if isinstance(item, dict):  # a mapping prefect could not type is a silent no-op
                assert not item, f"{d.name}: schedule {item!r} not understood by prefect"


def test_pull_step_sets_working_directory(prefect_yaml):
    (step,) = prefect_yaml["pull"]
    (name, args), = step.items()
    assert name == "prefect.deployments.steps.set_working_directory"
    # a placeholder, not a path baked into the file: resolved at deploy time if set there, else by the
    # worker at run time (tests/flows/test_prefect_server.py runs it the second way)
    assert re.fullmatch(r"\{\{\s*\$VOXMILL_HOME\s*\}\}", args["directory"]), args


def test_deployment_entrypoints_exist(deployments):
    assert set(deployments) == {"nightly-corpus", "adhoc-corpus"}
    for name, dep in deployments.items():
        file, _, func = dep["entrypoint"].partition(":")
        assert file == "flows/prepare.py" and func == "prepare_corpus", name
    path = ROOT / "flows" / "prepare.py"
    if not path.exists():
        pytest.skip("flows/prepare.py not written yet")
    tree = ast.parse(path.read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert "prepare_corpus" in funcs
    flow_fn = funcs["prepare_corpus"]
    assert any("flow" in ast.unparse(d) for d in flow_fn.decorator_list), "not a @flow"
    params = {a.arg for a in flow_fn.args.args + flow_fn.args.kwonlyargs}
    for name, dep in deployments.items():
        unknown = set(dep.get("parameters", {})) - params
        assert not unknown, f"{name}: parameters {unknown} are not arguments of prepare_corpus"


def test_work_pool_names_agree(deployments):
    pools = {d["work_pool"]["name"] for d in deployments.values()}
    assert pools == {"voxmill-process"}
    readme = (DEPLOY / "README.md").read_text()
    assert "prefect work-pool create voxmill-process --type process" in readme
    assert "prefect worker start --pool voxmill-process" in readme
    assert "prefect deploy --all --prefect-file deploy/prefect.yaml" in readme
    # what tests/flows/test_prefect_server.py also does: the worker's VOXMILL_HOME, an ad hoc run
    assert 'export VOXMILL_HOME="$PWD"' in readme
    assert "prefect deployment run prepare-corpus/adhoc-corpus" in readme


def test_nightly_schedule_and_limit(deployments):
    nightly = deployments["nightly-corpus"]
    (schedule,) = nightly["schedules"]
    cron = schedule["cron"]
    assert schedule["timezone"] == "UTC"
    assert CRON_RE.match(cron), cron
    try:
        from croniter import croniter
    except ImportError:
        from prefect.client.schemas.schedules import CronSchedule  # validates via cron parser

        CronSchedule(cron=cron, timezone=schedule["timezone"])
    else:
        assert croniter.is_valid(cron)
    assert nightly["concurrency_limit"] == 1
    assert set(nightly["parameters"]) == {"input", "output", "config_path", "new_version"}
    assert nightly["parameters"]["new_version"] is False  # nightly runs append to one output
    assert (ROOT / nightly["parameters"]["config_path"]).is_file()


def test_adhoc_has_no_schedule(deployments):
    adhoc = deployments["adhoc-corpus"]
    assert not adhoc.get("schedules") and not adhoc.get("schedule")


def test_cron_regex_rejects_garbage():
    assert CRON_RE.match("0 2 * * *") and CRON_RE.match("*/15 0-6 1,15 * 1-5")
    assert not CRON_RE.match("0 2 * *") and not CRON_RE.match("every night")


# --- job files -----------------------------------------------------------------------------

def test_job_example_validates():
    data = yaml.safe_load((DEPLOY / "job.example.yaml").read_text())
    job = JobConfig.model_validate(data)
    assert job.input and job.output
    assert set(data) - {"input", "output"} == set(JobConfig.model_fields) - {"input", "output"}


def test_rayjob_configmap_validates_and_is_mounted():
    cm = _one(DEPLOY / "ray-job.yaml", "ConfigMap")
    JobConfig.model_validate(yaml.safe_load(cm["data"]["job.yaml"]))
    job = _one(DEPLOY / "ray-job.yaml", "RayJob")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    assert volumes[mounts["/config"]]["configMap"]["name"] == cm["metadata"]["name"]


# --- KubeRay ---------------------------------------------------------------------------------

@pytest.mark.parametrize("file,kind", [("ray-cluster.yaml", "RayCluster"), ("ray-job.yaml", "RayJob")])
def test_kuberay_metadata(file, kind):
    doc = _one(DEPLOY / file, kind)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["metadata"]["name"]


@pytest.mark.parametrize("which", ["RayCluster", "RayJob"])
def test_kuberay_cluster_spec(which, version):
    spec = dict(_cluster_specs())[which]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        assert g["maxReplicas"] > g["minReplicas"], f"{name}: nothing to autoscale"
        for c in _pod_containers(g):
            res = c["resources"]
            assert res["limits"]["cpu"] and res["limits"]["memory"], name
    gpu = groups["gpu-workers"]
    assert gpu["minReplicas"] >= 1, "the engine plans CPU ASR when no GPU is up at start"
    assert all(str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1" for c in _pod_containers(gpu))
    assert str(gpu["rayStartParams"]["num-gpus"]) == "1"
    assert all("nvidia.com/gpu" not in c["resources"].get("limits", {})
               for c in _pod_containers(groups["cpu-workers"]))
    images = {c["image"] for g in [head, *groups.values()] for c in _pod_containers(g)}
    assert images == {f"voxmill:{version}"}


def test_rayjob_entrypoint():
    job = _one(DEPLOY / "ray-job.yaml", "RayJob")
    entry = job["spec"]["entrypoint"]
    assert entry.split()[:2] == ["voxmill", "run"]
    assert "--config /config/job.yaml" in entry
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# --- Dockerfile ------------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def test_dockerfile(version):
    instrs = _dockerfile()
    froms = [rest for instr, rest in instrs if instr == "FROM"]
    assert froms == ["python:3.11-slim"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    low = re.match(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"])
    assert low and int(low.group(1)) <= 11, "base image Python below requires-python"
    runs = " ".join(rest for instr, rest in instrs if instr == "RUN")
    for pkg in ("ffmpeg", "libsndfile1"):
        assert re.search(rf"apt-get install[^&]*\b{pkg}\b", runs), pkg
    assert re.search(r"pip install (\S+ )*\"?\.(\[[\w,]+\])?\"?(\s|$)", runs), "does not pip install the project"
    assert ".[job,gpu]" in runs, "nodes run the job (job extra), GPU nodes score DNSMOS there (gpu extra)"
    assert any(instr == "COPY" and rest.split()[0] == "." for instr, rest in instrs)
    assert ("ENTRYPOINT", '["voxmill"]') in instrs
    assert f"voxmill:{version}" in (DEPLOY / "Dockerfile").read_text()
