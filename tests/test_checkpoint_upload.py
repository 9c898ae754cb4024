"""Checkpoints uploaded in the background (``run.checkpoint_upload: async``), and a run that waits
only so long for its workers (``run.wait_for_workers_s``), on the real Ray with CPU workers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import base_config
from test_faults import read_audit

from rerank_ray.config import Config
from rerank_ray.errors import WorkersUnavailable
from rerank_ray.run.driver import train
from rerank_ray.training import checkpointing
from rerank_ray.training.faults import FAULTS_ENV

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_training_goes_on_while_a_checkpoint_uploads_only_when_async(
    ray_local, tiny_bert, pair_files, tmp_path, monkeypatch, mode
):
    """Rank 0's upload of step 4's checkpoint is held up for 6 s. Asynchronous: steps after 4 train
    before that checkpoint's marker is written; synchronous: none does. Either way every
    checkpoint ends complete (its marker written last) and the last one is awaited."""
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "slow-upload", "at": "checkpoint_upload", "rank": 0,
                                                  "step": 4, "action": "pause", "seconds": 6}]}  # fmt: skip
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    raw = base_config(
        tiny_bert,
        pair_files["train"],
        None,
        tmp_path / "runs",
        data={"id_column": "pair_id"},
        train={"epochs": 1},
        eval={"steps": 0},
        run={"storage_path": str(tmp_path / "runs"), "name": mode, "audit": True, "checkpoint_steps": 4,
             "checkpoint_upload": mode, "num_checkpoints_to_keep": 10},
    )  # fmt: skip
    outcome = train(Config.from_dict(raw))
    assert (faults_dir / "slow-upload").is_file()
    run_dir = Path(outcome.run_dir)
    completed = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("checkpoint-*/checkpoint.json")}
    assert sorted(completed) == [checkpointing.dir_name(step) for step in (4, 8, 12, 13)]
    for name in completed:  # every file its marker lists is there, whole (nothing pruned mid-upload)
        assert isinstance(
            checkpointing.verify(pafs.LocalFileSystem(), str(run_dir / name)), checkpointing.CheckpointInfo
        )
    # When the marker reached storage (its "written_at" is when the folder was written locally).
    uploaded_at = (run_dir / checkpointing.dir_name(4) / checkpointing.MARKER).stat().st_mtime
    later = [r["time"] for r in read_audit(run_dir) if r["kind"] == "pairs" and r["step"] > 4]
    trained_during_upload = [t for t in later if t < uploaded_at]
    if mode == "async":
        assert trained_during_upload, "no step trained while step 4's checkpoint uploaded"
    else:
        assert not trained_during_upload
    waits = [e["checkpoint_wait_s"] for e in outcome.metrics["history"] if "checkpoint_wait_s" in e]
    assert len(waits) == 3  # every checkpoint but the last (awaited, recorded after the history it saved)


def test_waiting_for_workers_that_never_fit_ends_naming_the_resources(ray_local, tiny_bert, pair_files, tmp_path):
    """Workers that ask for a resource no node has (as capacity lost with a node): after
    ``run.wait_for_workers_s`` the run fails with a message naming what it waited for, not a hang."""
    raw = base_config(
        tiny_bert,
        pair_files["train"],
        None,
        tmp_path / "runs",
        scaling={"num_workers": 2, "resources_per_worker": {"lost_accelerator": 1}},
        run={"storage_path": str(tmp_path / "runs"), "name": "waits", "wait_for_workers_s": 5},
    )
    with pytest.raises(WorkersUnavailable) as failure:
        train(Config.from_dict(raw))
    message = str(failure.value)
    assert "waited 5 s (run.wait_for_workers_s) for 2 worker(s)" in message and "'lost_accelerator': 1" in message
