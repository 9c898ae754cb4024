"""What a cluster user runs, checked without a cloud: cluster.yaml against Ray's own cluster-config
schema, the KubeRay RayJob, the jobs' runtime env and what Ray uploads of the working dir, and the
job entrypoints' commands and exit codes."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import ray
import yaml

from rerank_ray.cli import COMMANDS
from rerank_ray.config import load_config

ROOT = Path(__file__).parents[1]
GPU_INSTANCE = re.compile(r"^(g|p)\d")


def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def validate_like_ray_up(config: dict) -> dict:
    """What `ray up` does with the file before it talks to the cloud: merge the provider's
    defaults, then validate against ray/autoscaler/ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_schema_and_a_broken_copy_does_not():
    import jsonschema

    prepared = validate_like_ray_up(cluster_config())
    assert prepared["provider"]["type"] == "aws"

    broken = cluster_config()
    broken["available_node_types"]["gpu_a10g"]["min_worker"] = 0  # a typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_like_ray_up(broken)


def test_cluster_yaml_has_a_cpu_head_autoscaling_gpu_workers_and_installs_the_project():
    config = cluster_config()
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"]), "the head must not be a GPU instance"
    workers = {name: node for name, node in nodes.items() if name != config["head_node_type"]}
    assert workers and all(GPU_INSTANCE.match(n["node_config"]["InstanceType"]) for n in workers.values())
    assert all(n["min_workers"] == 0 and n["max_workers"] >= 2 for n in workers.values())
    assert config["idle_timeout_minutes"] > 0

    setup = "\n".join(config["setup_commands"])
    assert '"$HOME/rerank-ray[tune]"' in setup and "~/rerank-ray" in config["file_mounts"]
    # The cluster's Ray is the version jobs are submitted with.
    assert f'"ray[default,train,tune,data]=={ray.__version__}"' in setup
    # Token authentication on every node, with the token made by `ray get-auth-token --generate`.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for command in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token ray start" in command


def test_every_field_a_user_must_change_is_marked():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    must_change = re.compile(r"^\s*(cluster_name|region|ImageId|IamInstanceProfile):")
    for i, line in enumerate(lines):
        if must_change.match(line):
            nearby = "\n".join(lines[max(0, i - 6) : i + 1])
            assert "CHANGE" in nearby, f"cluster.yaml line {i + 1} ({line.strip()}) has no CHANGE note"


def test_rayjob_manifest_runs_the_job_entrypoint_with_a_valid_config():
    manifest = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "jobs/train.py", "--config", argv[3]]
    assert (ROOT / argv[3]).is_file()
    config = load_config(ROOT / argv[3], argv[4:])  # the overrides parse and check
    assert config.scaling.use_gpu and config.run.storage_path.startswith("s3://")
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"] == job_runtime_env()["env_vars"]
    (gpu_group,) = cluster["workerGroupSpecs"]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def job_runtime_env() -> dict:
    return yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())


def ray_package(folder: Path, target: Path, include_gitignore: bool) -> list[str]:
    """The files Ray would upload as the working dir `folder`, built by Ray's own packaging with
    the excludes `ray job submit --runtime-env jobs/runtime_env.yaml` applies."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    excludes = ray_constants.get_runtime_env_default_excludes() + job_runtime_env()["excludes"]
    create_package(str(folder), target, include_gitignore=include_gitignore, excludes=excludes)
    with zipfile.ZipFile(target) as package:
        return [n for n in package.namelist() if not n.endswith("/")]


def test_runtime_env_is_valid_and_keeps_big_folders_off_the_cluster(tmp_path):
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**job_runtime_env())  # Ray's own validation of every field

    # A checkout with what a laptop accumulates, and no .gitignore: the excludes alone must do.
    tree = tmp_path / "checkout"
    for name in ("rerank_ray", "jobs"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    clutter = [
        "runs/run/checkpoint-0000010/model/model.safetensors",
        "data/stsb/train.parquet",
        ".venv/lib/python3.11/site-packages/torch/lib/libtorch.so",
        "outputs/model/model.safetensors",
        ".git/objects/pack/pack-1.pack",
        "rerank_ray/__pycache__/driver.cpython-311.pyc",
        "jobs/__pycache__/train.cpython-311.pyc",
    ]
    for name in clutter:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"x" * 1024)
    uploaded = ray_package(tree, tmp_path / "package.zip", include_gitignore=False)
    leaked = [
        n for n in uploaded if n.split("/")[0] in ("runs", "data", ".venv", "outputs", ".git") or "__pycache__" in n
    ]
    assert leaked == []
    for needed in (
        "jobs/train.py",
        "jobs/tune.py",
        "jobs/configs/quickstart.yaml",
        "jobs/data/stsb-sample/train.csv",
        "rerank_ray/run/driver.py",
    ):
        assert needed in uploaded, needed

    # And the real repository as `ray job submit --working-dir .` sends it: small.
    real = tmp_path / "real.zip"
    ray_package(ROOT, real, include_gitignore=True)
    assert real.stat().st_size < 5 * 1024 * 1024


JOBS = {
    "train": "--config jobs/configs/X.yaml",
    "tune": "--config jobs/configs/X.yaml",
    "mine": "--config",
    "score": "--model",
}


@pytest.mark.parametrize("name", list(JOBS))
def test_job_entrypoints_document_the_submit_command(name):
    doc = (ROOT / "jobs" / f"{name}.py").read_text()
    assert "ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml" in doc
    assert f"-- python jobs/{name}.py {JOBS[name]}" in doc


@pytest.mark.parametrize("name", list(JOBS))
def test_job_entrypoint_exit_code_is_the_outcome(name, tmp_path):
    assert name in COMMANDS
    missing = tmp_path / ("missing.yaml" if name != "score" else "missing.jsonl")
    args = ["--config", str(missing)]
    if name == "score":
        args = ["--model", "m", "--data", str(missing), "--output", str(tmp_path / "out")]
    # Run from elsewhere, as Ray runs it (cwd: the job's working dir; sys.path[0]: jobs/).
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
