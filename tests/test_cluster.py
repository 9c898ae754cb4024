"""Jobs on a real Ray cluster: two nodes on this machine, token authentication on, S3 storage.

One submitted training run proves: the job joins the cluster it runs on; its two workers run on
two different nodes (STRICT_SPREAD); checkpoints and the exported model land in an S3 bucket (a
real S3 API, moto's server on 127.0.0.1) and the model loads after downloading; nothing the run
prints or writes holds a secret (cloud keys and a Hugging Face token in the nodes' environment,
Ray's auth token). Bad jobs end FAILED with exit code 2 and the cause in
their logs, through both the job API and the `ray job submit` command line. A node lost in the
middle of a run: the run restores on the node left and trains each remaining pair once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from local_cluster import RAY, LocalCluster
from local_s3 import FAKE_KEY_ID, FAKE_SECRET, LocalS3
from tiny import synthetic_pairs, write_jsonl

pytestmark = pytest.mark.ray

ROOT = Path(__file__).parents[1]
#: What the nodes' environment holds on a real cluster (fake values).
NODE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEENVKEY000001",
    "AWS_SECRET_ACCESS_KEY": "envSecretFAKE/0123456789+abcdefghijklmno",
    "HF_TOKEN": "hf_FAKEtokenFAKEtoken0123456789abcd",
}
JOB_TIMEOUT_S = 480


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = LocalS3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(env_extra=NODE_SECRETS).start()
    yield local
    local.stop()
    assert not local.marked_pids(), "processes of the test cluster survived stop()"


def job_runtime_env() -> dict:
    """jobs/runtime_env.yaml as users submit it, with the repository as the working dir. Its pip
    list is dropped: this machine has the packages, and installing them needs PyPI."""
    runtime_env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    runtime_env.pop("pip")
    runtime_env["working_dir"] = str(ROOT)
    return runtime_env


def wait_for(client, submission_id: str) -> tuple[object, str]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        info = client.get_job_info(submission_id)
        if info.status.is_terminal():
            return info, client.get_job_logs(submission_id)
        time.sleep(2)
    client.stop_job(submission_id)
    raise TimeoutError(f"job {submission_id} still {info.status} after {JOB_TIMEOUT_S} s")


def submit_with_faults(cluster: LocalCluster, config: dict, spec: dict, config_file: Path) -> tuple[object, str]:
    """``jobs/train.py`` submitted as a user does, ``config`` written to ``config_file``, with the
    fault ``spec`` (rerank_ray.training.faults) in the job's environment: (client, submission id)."""
    from ray.job_submission import JobSubmissionClient

    from rerank_ray.training.faults import FAULTS_ENV

    config_file.write_text(yaml.safe_dump(config))
    client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers)
    runtime_env = job_runtime_env()
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), FAULTS_ENV: json.dumps(spec)}
    return client, client.submit_job(entrypoint=f"python jobs/train.py --config {config_file}", runtime_env=runtime_env)


def wait_for_fault(client, submission_id: str, faults_dir: Path, name: str) -> None:
    """Until the fault ``name`` has fired (its file in ``faults_dir``); the job must still run."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (faults_dir / name).exists():
        status = client.get_job_info(submission_id).status
        assert not status.is_terminal() and time.monotonic() < deadline, (
            f"fault {name} never fired ({status}): {client.get_job_logs(submission_id)[-3000:]}"
        )
        time.sleep(0.5)


def secrets_in(text: str, cluster: LocalCluster) -> list[str]:
    candidates = [
        FAKE_KEY_ID,
        FAKE_SECRET,
        quote(FAKE_SECRET, safe=""),
        "0123456789abcdefghij",  # the distinctive part of the URI secret, however it is encoded
        cluster.token,
        *NODE_SECRETS.values(),
    ]
    return [c for c in candidates if c in text]


def test_training_job_on_two_nodes_with_token_auth_exports_to_s3(cluster, s3, tiny_bert, tmp_path):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    s3.make_bucket("bucket")
    eval_rows = synthetic_pairs(61, seed=2)
    config = {
        "model": {"name_or_path": str(tiny_bert)},
        "data": {
            "train": str(write_jsonl(synthetic_pairs(203, seed=1), tmp_path / "train.jsonl")),
            "eval": str(write_jsonl(eval_rows, tmp_path / "eval.jsonl")),
        },
        "train": {"epochs": 2, "per_device_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 4},
        "eval": {"steps": 0},
        "scaling": {"num_workers": 2, "placement_strategy": "STRICT_SPREAD"},
        "run": {"storage_path": s3.uri("bucket", "runs"), "name": "job"},
    }
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(config))

    # Token authentication is on: a wrong token is refused.
    with pytest.raises(AuthenticationError, match="Invalid authentication token"):
        intruder = JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": "Bearer not-the-token"})
        intruder.submit_job(entrypoint="echo hi")

    client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers)
    # --verbose: Ray's own lines (the workers' too) reach the job's log, and still no secret does.
    submission_id = client.submit_job(
        entrypoint=f"python jobs/train.py --config {config_file} --verbose", runtime_env=job_runtime_env()
    )
    info, logs = wait_for(client, submission_id)
    assert info.status == JobStatus.SUCCEEDED, f"{info.message}\n{logs[-5000:]}"
    assert info.driver_exit_code == 0
    # The entrypoint joined this cluster (RAY_ADDRESS from the job supervisor), not a Ray of its own.
    assert "[rerank-ray] joined the Ray cluster at " in logs and "started an embedded local Ray" not in logs
    assert "(RayTrainWorker pid=" in logs and "[rerank-ray] step 26/26 | epoch 2.00" in logs, logs[-3000:]

    # Two training workers, on two different nodes.
    workers = [a for a in cluster.actors("RayTrainWorker") if a.job_id == info.job_id]
    assert len(workers) == 2 and len({w.node_id for w in workers}) == 2, workers

    # Checkpoints and the model are in the bucket, nowhere else.
    objects = s3.files("bucket")
    checkpoints = {p.split("/")[3] for p in objects if p.startswith("bucket/runs/job/checkpoint-")}
    assert len(checkpoints) == 2, sorted(objects)
    assert all(f"bucket/runs/job/{c}/model/config.json" in objects for c in checkpoints)
    model_files = {p.removeprefix("bucket/runs/job/model/") for p in objects if p.startswith("bucket/runs/job/model/")}
    assert {"config.json", "model.safetensors", "README.md", "metrics.json", "training_curve.png"} <= model_files
    assert "[rerank-ray] model exported to s3://bucket/runs/job/model?endpoint_override=" in logs

    # The downloaded model loads, and scores what the run reported.
    local_model = s3.download("bucket", "bucket/runs/job/model", tmp_path / "downloaded")
    model = CrossEncoder(str(local_model))
    evaluator = CrossEncoderClassificationEvaluator(
        [[r["sentence_0"], r["sentence_1"]] for r in eval_rows], [int(r["label"]) for r in eval_rows], name="eval"
    )
    reported = json.loads((local_model / "metrics.json").read_text())
    headline = reported["headline_metric"]
    assert evaluator(model)[headline] == pytest.approx(reported["final"][headline], abs=1e-6)

    # No secret in the job's logs, nor in any text the run left in the bucket.
    assert secrets_in(logs, cluster) == []
    for path in objects:
        if path.endswith((".json", ".md", ".txt", ".yaml", ".csv")):
            text = s3.read("bucket", path).decode("utf-8", errors="replace")
            assert secrets_in(text, cluster) == [], path


def test_bad_jobs_fail_with_exit_code_2_and_the_cause_in_their_logs(cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers)
    # The quickstart config as it is: its relative storage_path would vanish with the job.
    relative_storage = client.submit_job(
        entrypoint="python jobs/train.py --config jobs/configs/quickstart.yaml", runtime_env=job_runtime_env()
    )
    # Workers that would take every CPU of the cluster (2 nodes x 3): Ray Data would never start.
    starved = client.submit_job(
        entrypoint="python jobs/train.py --config jobs/configs/quickstart.yaml scaling.num_workers=2 "
        f"scaling.cpus_per_worker=3 run.storage_path={tmp_path / 'runs'}",
        runtime_env=job_runtime_env(),
    )
    # A typo, submitted with the documented command line; the CLI finds the token the way users
    # configure it (RAY_AUTH_MODE=token and the token file).
    runtime_env_file = tmp_path / "runtime_env.yaml"
    runtime_env_file.write_text(yaml.safe_dump({k: v for k, v in job_runtime_env().items() if k != "working_dir"}))
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cli_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=cluster.env["RAY_AUTH_TOKEN_PATH"])
    cli = subprocess.run(
        [
            RAY, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".",
            "--runtime-env", str(runtime_env_file), "--",
            "python", "jobs/train.py", "--config", "jobs/configs/quickstart.yaml", "train.learnin_rate=1e-4",
        ],
        cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert cli.returncode == 1, cli.stdout[-3000:] + cli.stderr[-3000:]
    message = "unknown config key train.learnin_rate (did you mean train.learning_rate?)"
    assert message in cli.stdout + cli.stderr
    typo = next(j for j in client.list_jobs() if j.entrypoint.endswith("train.learnin_rate=1e-4"))
    assert typo.status == JobStatus.FAILED and typo.driver_exit_code == 2
    assert message in client.get_job_logs(typo.submission_id)

    info, logs = wait_for(client, relative_storage)
    assert info.status == JobStatus.FAILED and info.driver_exit_code == 2, logs[-3000:]
    assert "error: run.storage_path 'runs' is a relative path: in a Ray job" in logs
    assert "run.storage_path=s3://bucket/prefix" in logs
    assert secrets_in(logs + cli.stdout + cli.stderr, cluster) == []

    info, logs = wait_for(client, starved)
    assert info.status == JobStatus.FAILED and info.driver_exit_code == 2, logs[-3000:]
    assert "error: the Ray cluster has 6 CPUs and the 2 training workers reserve 6" in logs, logs[-3000:]
    assert "scaling.cpus_per_worker=2.5 or less" in logs


def _embedded_ray_with_address_file(address: str) -> dict:
    """Start rerank-ray's embedded Ray (no run.ray_address, no RAY_ADDRESS) on a machine whose
    Ray temp dir holds ``ray_current_cluster`` naming ``address``, as ``ray start --head`` leaves it
    (and leaves it behind when it is stopped uncleanly). Returns what the started Ray is."""
    root = tempfile.mkdtemp(prefix="rr-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        Path(root, "ray").mkdir()
        Path(root, "ray", "ray_current_cluster").write_text(address)
        code = (
            "import json, ray\n"
            "from rerank_ray.config import Config\n"
            "from rerank_ray.run.cluster import ensure_ray\n"
            "config = Config.from_dict({'model': {'name_or_path': 'm'}, 'data': {'train': 't.jsonl'},"
            " 'scaling': {'num_workers': 1}})\n"
            "ensure_ray(config)\n"
            "print(json.dumps({'gcs': ray.get_runtime_context().gcs_address,"
            " 'cpus': ray.cluster_resources().get('CPU')}))\n"
            "ray.shutdown()\n"
        )
        env = {**os.environ, "RAY_TMPDIR": root}
        env.pop("RAY_ADDRESS", None)
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_stale_ray_address_file_does_not_stop_a_local_run():
    """A `ray start --head` stopped uncleanly leaves its address file: rerank-ray still starts
    its own Ray (it used to end in Ray's "num_cpus and num_gpus must not be provided")."""
    started = _embedded_ray_with_address_file("127.0.0.1:1")
    assert started["gcs"] != "127.0.0.1:1" and started["cpus"] >= 3  # 1 worker + the data CPUs


def test_a_running_local_cluster_is_not_joined_by_accident(cluster):
    """With a live head on the machine named by the address file, a run without an address still
    gets a Ray of its own: joining a cluster is said with run.ray_address or RAY_ADDRESS."""
    started = _embedded_ray_with_address_file(cluster.gcs_address)
    assert started["gcs"] != cluster.gcs_address


EMBEDDED_RAY_UNTIL_STDIN_CLOSES = (
    "import json, sys, ray\n"
    "from rerank_ray.config import Config\n"
    "from rerank_ray.run.cluster import ensure_ray\n"
    "config = Config.from_dict({'model': {'name_or_path': 'm'}, 'data': {'train': 't.jsonl'},"
    " 'scaling': {'num_workers': 1}})\n"
    "ensure_ray(config)\n"
    "print(json.dumps({'gcs': ray.get_runtime_context().gcs_address}), flush=True)\n"
    "sys.stdin.read()\n"
    "ray.shutdown()\n"
)


@pytest.mark.ray
def test_an_embedded_ray_leaves_a_neighbours_default_ports_free(tmp_path):
    """rerank-ray's embedded Ray and a `ray start --head` on the same machine: the neighbour keeps
    Ray's default dashboard-agent port (52365, which the embedded Ray used to hold: the
    neighbour's job server then answered every submission with "No available agent to submit
    job"), and a trivial `ray job submit` to it succeeds while the embedded Ray runs."""
    from local_cluster import MARKER, free_ports, kill_marked
    from ray.job_submission import JobStatus, JobSubmissionClient

    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env[MARKER] = marker  # every process either Ray starts carries it: all are ended below
    env["RAY_AUTH_MODE"] = "disabled"  # a plain neighbour (`ray start` turns token authentication on by default)
    embedded = subprocess.Popen(
        [sys.executable, "-c", EMBEDDED_RAY_UNTIL_STDIN_CLOSES],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert embedded.stdout is not None
        json.loads(embedded.stdout.readline())  # the embedded Ray is up
        # The neighbour's `ray start --block` (ended with everything else that carries the marker).
        gcs_port, dashboard_port = free_ports(2)
        root = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))
        subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
             f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--temp-dir={root}"],  # the agent's port left at its default
            env=env, stdout=(root / "neighbour.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        client = None
        deadline = time.monotonic() + 180
        while client is None and time.monotonic() < deadline:
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dashboard_port}")
            except Exception:  # noqa: BLE001 - the dashboard answers once it is up
                time.sleep(1)
        assert client is not None, (root / "neighbour.log").read_text()[-3000:]
        job = client.submit_job(entrypoint="python -c \"print('neighbour ok')\"")
        while time.monotonic() < deadline and client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            time.sleep(1)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
        assert "neighbour ok" in client.get_job_logs(job)
    finally:
        if embedded.stdin is not None:
            embedded.stdin.close()  # the embedded Ray shuts down
        with contextlib.suppress(subprocess.TimeoutExpired):
            embedded.wait(timeout=30)
        kill_marked(marker)


def test_a_lost_node_restores_on_the_node_left_and_trains_each_remaining_pair_once(cluster, tiny_bert, tmp_path):
    """Spot capacity going away: the second node's processes SIGKILLed at once while its worker is
    in epoch 2 (after step 17, 4 of its 13 steps). Ray Train restarts the workers (run.max_failures)
    on the head node, the one left; they restore step 16, the newest complete checkpoint, and the
    rest of epoch 2 trains exactly the pairs it had not trained (pair ids counted). Last in this
    module: the node is started again at the end for whatever runs after."""
    from ray.job_submission import JobStatus
    from test_faults import assert_every_pair_once_per_epoch, read_audit, sessions_in_order, trained_per_epoch

    rows = [{**row, "pair_id": f"p{i}"} for i, row in enumerate(synthetic_pairs(203, seed=1))]
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "node", "at": "step", "node": "worker", "step": 17,
                                                  "action": "pause", "seconds": 600}]}  # fmt: skip
    config = {
        "model": {"name_or_path": str(tiny_bert)},
        "data": {"train": str(write_jsonl(rows, tmp_path / "train.jsonl")), "id_column": "pair_id"},
        "train": {"epochs": 2, "per_device_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 4},
        # SPREAD (not STRICT_): one worker per node while there are two, both on the head after.
        "scaling": {"num_workers": 2, "placement_strategy": "SPREAD"},
        "run": {"storage_path": str(tmp_path / "runs"), "name": "lost", "audit": True, "checkpoint_steps": 4,
                "max_failures": 2,
                # Sync: step 16's checkpoint is in storage before step 17 trains. An async upload
                # waits for Ray Train's controller to take the worker's previous report, which it
                # cannot once a worker is lost: uploads still queued go with the group and the
                # restore point is older (docs/failures.md).
                "checkpoint_upload": "sync"},
    }  # fmt: skip
    client, submission_id = submit_with_faults(cluster, config, spec, tmp_path / "lost.yaml")
    try:
        wait_for_fault(client, submission_id, faults_dir, "node")  # the worker on the second node paused after step 17
        assert cluster.kill_node("worker") >= 2  # its ray start, raylet, ... and the paused worker
        info, logs = wait_for(client, submission_id)
        assert info.status == JobStatus.SUCCEEDED, f"{info.message}\n{logs[-5000:]}"
        assert "[rerank-ray] step 26/26 | epoch 2.00" in logs, logs[-3000:]
        assert len(cluster.alive_nodes()) == 1
    finally:
        cluster.start_worker_node()

    records = read_audit(tmp_path / "runs" / "lost")
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 16]
    assert_every_pair_once_per_epoch(trained_per_epoch(records, sessions), epochs=2, pairs=203)


@pytest.mark.slow  # about 3 minutes: a node lost and brought back, two resizes
def test_an_elastic_run_trains_on_through_a_lost_node_and_grows_back(cluster, tiny_bert, tmp_path):
    """Spot capacity going and coming back, on the two-node local cluster: an elastic run of 1 to 2
    workers (2 CPUs each: one per node) pauses its worker on the second node after step 6 and the
    node is killed; Ray Train restarts the group on the one worker the head node holds, which
    restores the newest complete checkpoint and takes the planned global batch (8 x 2
    accumulated). Its worker pauses after step 16 while the node is started again; the group grows
    back to 2 workers from the newest checkpoint. Every pair is trained once per epoch over the
    three worker groups, and the ranks agree at every checkpoint."""
    from ray.job_submission import JobStatus
    from test_faults import assert_every_pair_once_per_epoch, read_audit, sessions_in_order, trained_per_epoch

    rows = [{**row, "pair_id": f"p{i}"} for i, row in enumerate(synthetic_pairs(203, seed=1))]
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [
        {"name": "lose", "at": "step", "node": "worker", "step": 6, "action": "pause", "seconds": 600},
        {"name": "regrow", "at": "step", "node": "head", "step": 16, "action": "pause", "seconds": 90},
    ]}  # fmt: skip
    config = {
        "model": {"name_or_path": str(tiny_bert)},
        "data": {"train": str(write_jsonl(rows, tmp_path / "train.jsonl")), "id_column": "pair_id"},
        "train": {"epochs": 2, "per_device_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 2},
        "scaling": {"num_workers": 2, "min_workers": 1, "cpus_per_worker": 2, "placement_strategy": "SPREAD",
                    "resize_check_s": 5},
        "run": {"storage_path": str(tmp_path / "runs"), "name": "elastic", "audit": True, "checkpoint_steps": 2,
                "checkpoint_upload": "sync", "max_failures": 3},
    }  # fmt: skip
    client, submission_id = submit_with_faults(cluster, config, spec, tmp_path / "elastic.yaml")
    try:
        wait_for_fault(client, submission_id, faults_dir, "lose")
        assert cluster.kill_node("worker") >= 2
        wait_for_fault(client, submission_id, faults_dir, "regrow")  # training on the head node alone
        cluster.start_worker_node()
        info, logs = wait_for(client, submission_id)
        assert info.status == JobStatus.SUCCEEDED, f"{info.message}\n{logs[-5000:]}"
    finally:
        if len(cluster.alive_nodes()) < 2:
            cluster.start_worker_node()

    records = read_audit(tmp_path / "runs" / "elastic")
    sessions = sessions_in_order(records)
    ranks = [
        {r["rank"] for r in records if r["session"] == session and r["kind"] == "pairs"} for session, _ in sessions
    ]
    assert len(sessions) == 3 and ranks == [{0, 1}, {0}, {0, 1}], (sessions, ranks)
    assert sessions[1][1] <= 6 and sessions[2][1] <= 16
    assert_every_pair_once_per_epoch(trained_per_epoch(records, sessions), epochs=2, pairs=203)
    digests: dict[tuple[str, int], set[str]] = {}
    for record in records:
        if record["kind"] == "params":
            digests.setdefault((record["session"], record["step"]), set()).add(record["digest"])
    assert all(len(found) == 1 for found in digests.values())
    assert "1 worker(s) of 2 planned: a batch of 8 x 2 accumulated" in logs
