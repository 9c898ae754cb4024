"""Storage paths and URIs, the one-step publication of an export (local and a real S3 API), and
the scrubbing of secrets from what a run prints. No Ray here: tests/test_cluster.py runs a real
job against the same S3 server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from local_s3 import FAKE_KEY_ID, FAKE_SECRET, LocalS3
from tiny import synthetic_pairs, write_jsonl

from rerank_ray import storage
from rerank_ray.cli import main
from rerank_ray.config import Config
from rerank_ray.errors import ConfigError
from rerank_ray.redaction import redact
from rerank_ray.run.cluster import check_cluster_address, check_storage_outlives_job
from rerank_ray.run.driver import train
from rerank_ray.run.lock import RunLock
from rerank_ray.run.paths import run_dir
from rerank_ray.tune.report import SearchPaths, report_search
from rerank_ray.tune.search import search_exists
from rerank_ray.tune.space import check_tune

ENV_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "envSecretFAKE/0123456789+abcdefghijklmno",
    "HF_TOKEN": "hf_FAKEtokenFAKEtoken0123456789abcd",
    "RAY_AUTH_TOKEN": "0f3a9c7e5b1d2468ace0fbd97531eca8",
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = LocalS3(tmp_path_factory.mktemp("s3"))
    server.make_bucket("bucket")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.credentials().items():
            patch.setenv(name, value)  # how pyarrow finds the keys: the environment, never the URI
        yield server
    server.stop()


def test_join_keeps_a_uris_options_at_the_end():
    uri = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert (
        storage.join(uri, "job", "model") == "s3://bucket/runs/job/model?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert storage.join("gs://bucket/", "job") == "gs://bucket/job"
    assert storage.join("/mnt/nfs/runs", "job") == "/mnt/nfs/runs/job"
    assert storage.resolve("file:///mnt/nfs/runs") == "/mnt/nfs/runs"
    assert storage.resolve("~/runs") == str(Path.home() / "runs")
    config = Config.from_dict(
        {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}, "run": {"storage_path": uri}}
    )
    assert run_dir(config, "job") == "s3://bucket/runs/job?endpoint_override=127.0.0.1:9000&scheme=http"


def _export_folder(folder: Path, marker: str) -> Path:
    (folder / "nested").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(marker.encode() * 100)
    (folder / "nested" / "events").write_text(marker)
    (folder / storage.COMPLETE_MARKER).write_text(json.dumps({"export": marker}))
    return folder


def test_publish_replaces_a_local_export_in_one_step(tmp_path):
    target = tmp_path / "runs" / "job" / "model"
    storage.publish_dir(str(_export_folder(tmp_path / "first", "first")), str(target))
    (target / "stale.bin").write_text("from an older export")
    storage.publish_dir(str(_export_folder(tmp_path / "second", "second")), str(target))
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "metrics.json",
        "model.safetensors",
        "nested",
        "nested/events",
    ]
    assert json.loads((target / "metrics.json").read_text()) == {"export": "second"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no staging folder left


def test_publish_to_s3_replaces_the_old_export_and_writes_the_marker_last(s3, tmp_path):
    target = s3.uri("bucket", "runs/job/model")
    storage.publish_dir(str(_export_folder(tmp_path / "first", "first")), target)
    with s3.filesystem("bucket").open_output_stream("bucket/runs/job/model/stale.bin") as f:
        f.write(b"from an older export")
    log_start = s3.log_size()
    storage.publish_dir(str(_export_folder(tmp_path / "second", "second")), target)
    assert sorted(p for p in s3.files("bucket") if p.startswith("bucket/runs/job/model/")) == [
        "bucket/runs/job/model/metrics.json",
        "bucket/runs/job/model/model.safetensors",
        "bucket/runs/job/model/nested/events",
    ]
    assert json.loads(s3.read("bucket", "bucket/runs/job/model/metrics.json")) == {"export": "second"}
    assert (tmp_path / "second" / storage.COMPLETE_MARKER).is_file()  # the local folder is left whole
    # The server's request log: the last object written is the marker.
    writes = re.findall(r'"(?:PUT|POST) /bucket/runs/job/model/(\S+?)[ ?]', s3.log_text()[log_start:])
    assert writes and writes[-1] == "metrics.json" and "model.safetensors" in writes, writes


def test_the_one_uploader_writes_a_checkpoint_model_first_marker_last_without_threads(s3, tmp_path, monkeypatch):
    """Checkpoints and exports share storage.upload_folder: on the S3 API every copy runs with
    pyarrow's threads off (apache/arrow#32372), the folder named first goes first and the marker
    last; the callback runs once the first entry is there."""
    import pyarrow.fs as pafs

    folder = tmp_path / "checkpoint_000004"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"w" * 1000)
    (folder / "optimizer.pt").write_bytes(b"o" * 100)
    (folder / "COMPLETE").write_text("{}")
    calls, real_copy = [], pafs.copy_files

    def spy(source, destination, **options):
        calls.append((destination.rsplit("/", 1)[-1], options.get("use_threads", True)))
        return real_copy(source, destination, **options)

    monkeypatch.setattr(pafs, "copy_files", spy)
    fs, inner = storage.filesystem(s3.uri("bucket", "runs/job/checkpoint_000004"))
    seen_after_first = []

    def checkpoint_files() -> list[str]:
        return sorted(p for p in s3.files("bucket") if "/checkpoint_000004/" in p)

    storage.upload_folder(
        str(folder),
        fs,
        inner,
        marker="COMPLETE",
        first="model",
        after_first=lambda: seen_after_first.append(checkpoint_files()),
    )
    assert [name for name, _ in calls] == ["model", "optimizer.pt", "COMPLETE"]
    assert all(use_threads is False for _, use_threads in calls), calls
    assert seen_after_first == [["bucket/runs/job/checkpoint_000004/model/weights.bin"]]
    assert checkpoint_files() == [
        "bucket/runs/job/checkpoint_000004/COMPLETE",
        "bucket/runs/job/checkpoint_000004/model/weights.bin",
        "bucket/runs/job/checkpoint_000004/optimizer.pt",
    ]


def test_search_report_files_go_next_to_the_trials_on_s3(s3, tmp_path):
    """A search on object storage: its table and plot join the trials' folders, which stay."""
    root = s3.uri("bucket", "runs/search")
    with s3.filesystem("bucket").open_output_stream("bucket/runs/search/trials/t1/state.json") as f:
        f.write(b"{}")
    report = tmp_path / "report"
    report.mkdir()
    (report / "trials.csv").write_text("trial_id\nt1\n")
    (report / "search_summary.json").write_text("{}")
    storage.upload_files(str(report), root)
    assert sorted(p for p in s3.files("bucket") if p.startswith("bucket/runs/search/")) == [
        "bucket/runs/search/search_summary.json",
        "bucket/runs/search/trials.csv",
        "bucket/runs/search/trials/t1/state.json",
    ]


def test_redact_masks_uri_credentials_tokens_and_secret_env_values(monkeypatch):
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/home/me/.ray/auth_token")  # a path, not a secret
    monkeypatch.setenv("SOME_TOKEN", "short")  # too short to mask without masking words
    text = (
        "s3://AKIAEXAMPLE:abc%2Fdef@bucket/runs?endpoint_override=h:9000&scheme=http "
        "https://host/f?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA%2F1&a=1 "
        "gs://bucket/x?token=opaque Authorization: Bearer abc.def-ghi "
        f"key={ENV_SECRETS['AWS_SECRET_ACCESS_KEY']} hub {ENV_SECRETS['HF_TOKEN']} hf_Othertoken01234567890123456 "
        f"ray {ENV_SECRETS['RAY_AUTH_TOKEN']} path /home/me/.ray/auth_token short"
    )
    assert redact(text) == (
        "s3://***@bucket/runs?endpoint_override=h:9000&scheme=http "
        "https://host/f?X-Amz-Signature=***&X-Amz-Credential=***&a=1 "
        "gs://bucket/x?token=*** Authorization: Bearer *** "
        "key=*** hub *** *** "
        "ray *** path /home/me/.ray/auth_token short"
    )


def _assert_no_secret(text: str) -> None:
    for secret in (FAKE_KEY_ID, FAKE_SECRET, "0123456789abcdefghij", *ENV_SECRETS.values()):
        assert secret not in text


def test_cli_prints_no_secret_from_uris_or_the_environment(s3, tiny_bert, tmp_path, monkeypatch, capsys):
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    train = write_jsonl(synthetic_pairs(10), tmp_path / "train.jsonl")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"model:\n  name_or_path: {tiny_bert}\ndata:\n  train: {train}\n")
    storage_uri = s3.uri("bucket", "runs")

    # A storage URI with keys in it is refused before anything starts, without repeating them.
    code = main(["config", "--config", str(config_file), f"run.storage_path={s3.uri('bucket', 'runs', secret=True)}"])
    captured = capsys.readouterr()
    assert code == 2
    _assert_no_secret(captured.out + captured.err)
    assert "run.storage_path carries a credential" in captured.err

    # The resolved config: environment secrets never printed, the URI's options kept.
    assert main(["config", "--config", str(config_file), f"run.storage_path={storage_uri}"]) == 0
    out = capsys.readouterr().out
    _assert_no_secret(out)
    assert f"storage_path: s3://bucket/runs?endpoint_override=127.0.0.1:{s3.port}&scheme=http" in out

    # Errors that quote a storage URI: a finished run in the bucket, a data URI with options.
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    with s3.filesystem("bucket").open_output_stream(f"bucket/runs/done/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}") as f:
        f.write(b"{}")
    code = main(["train", "--config", str(config_file), f"run.storage_path={storage_uri}", "run.name=done"])
    captured = capsys.readouterr()
    assert code == 2
    _assert_no_secret(captured.out + captured.err)
    assert "run 'done' already has checkpoints in s3://bucket/runs?endpoint_override=" in captured.err

    data_uri = s3.uri("bucket", "data/train.jsonl")
    code = main(["train", "--config", str(config_file), f"data.train={data_uri}", f"run.storage_path={tmp_path}"])
    captured = capsys.readouterr()
    assert code == 2
    _assert_no_secret(captured.out + captured.err)
    assert "data.train: s3://bucket/data/train.jsonl?endpoint_override=" in captured.err
    assert "options in a data URI's query are not supported" in captured.err and "AWS_ENDPOINT_URL" in captured.err


def test_audit_needs_storage_that_can_append():
    raw = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}
    with pytest.raises(ConfigError, match=r"run.audit appends .* which s3:// storage cannot do"):
        Config.from_dict({**raw, "run": {"storage_path": "s3://bucket/runs", "audit": True}})
    Config.from_dict({**raw, "run": {"storage_path": "/mnt/nfs/runs", "audit": True}})


def test_a_job_refuses_storage_that_would_vanish_with_its_working_dir(monkeypatch):
    raw = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}
    relative = Config.from_dict({**raw, "run": {"storage_path": "runs"}})
    check_storage_outlives_job(relative)  # outside a Ray job, a relative path is a local folder
    job_config = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job_config))
    with pytest.raises(ConfigError, match=r"run.storage_path 'runs' is a relative path: in a Ray job"):
        check_storage_outlives_job(relative)
    with pytest.raises(ConfigError, match=r"run.output_dir 'out/model' is a relative path"):
        check_storage_outlives_job(
            Config.from_dict({**raw, "run": {"storage_path": "/nfs", "output_dir": "out/model"}})
        )
    check_storage_outlives_job(Config.from_dict({**raw, "run": {"storage_path": "s3://bucket/runs"}}))
    check_storage_outlives_job(Config.from_dict({**raw, "run": {"storage_path": "/mnt/nfs/runs"}}))
    # Through the driver's own entry point: the check sees the path before the driver resolves it.
    with pytest.raises(ConfigError, match=r"run.storage_path 'runs' is a relative path: in a Ray job"):
        train(Config.from_dict({**raw, "run": {"storage_path": "runs"}}))


def test_the_dashboard_address_is_not_a_cluster_address():
    with pytest.raises(ConfigError, match="job submission address: submit this as a job"):
        check_cluster_address("http://127.0.0.1:8265")
    check_cluster_address("10.0.0.5:6379")


def test_a_search_on_s3_keeps_the_uris_options_after_every_path(s3, capsys):
    """``rerank-ray tune`` joins its folders (Tune's state, the trials' runs, the report, the
    export) with the one storage join, so pyarrow's options stay in the query: the report of a
    search lands in the bucket under the search's folder."""
    uri = s3.uri("bucket", "searches")
    config = Config.from_dict(
        {
            "model": {"name_or_path": "m"},
            "data": {"train": "t.jsonl", "eval": "e.jsonl"},
            "run": {"storage_path": uri, "name": "grid"},
            "tune": {"space": {"train.learning_rate": {"choice": [1e-5, 2e-5]}}, "search": "grid"},
        }
    )
    paths = SearchPaths.of(config)
    assert paths.root == s3.uri("bucket", "searches/grid")
    assert paths.tune == s3.uri("bucket", "searches/grid/tune")
    assert paths.trials == s3.uri("bucket", "searches/grid/trials")
    assert paths.output == s3.uri("bucket", "searches/grid/model")
    assert not search_exists(paths)  # Tune looks for its state through the URI's endpoint
    outcome = report_search(config, check_tune(config), paths, rows=[])
    assert outcome.best is None and "no trial produced a checkpoint" in capsys.readouterr().out
    written = {path for path in s3.files("bucket") if path.startswith("bucket/searches/")}
    assert written == {
        "bucket/searches/grid/trials.csv",
        "bucket/searches/grid/search.png",
        "bucket/searches/grid/search_summary.json",
    }


def test_a_run_lock_on_s3_refuses_a_second_driver(s3):
    """Object storage has no create-if-absent through pyarrow: the lock is written and read back
    (see rerank_ray.run.lock); a second driver finds it and stops, and release removes it."""
    run_dir = s3.uri("bucket", "runs/locked")
    with RunLock(run_dir, "locked", 300):
        assert "bucket/runs/locked/run.lock" in s3.files("bucket")
        with pytest.raises(ConfigError, match="run 'locked' is being trained by another rerank-ray process"):
            RunLock(run_dir, "locked", 300).acquire()
    assert "bucket/runs/locked/run.lock" not in s3.files("bucket")
