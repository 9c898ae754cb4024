"""Where a base model comes from and what loading it may run (rerank_ray.training.models)."""

from __future__ import annotations

import json
import shutil


def test_remote_code_runs_only_when_the_config_allows_it(tiny_bert, tmp_path):
    """A model folder that ships its own modelling code (``auto_map``): with the default config
    that code is never imported; ``model.trust_remote_code: true`` imports it."""
    from rerank_ray.config import ModelConfig
    from rerank_ray.training.models import load_cross_encoder, load_tokenizer

    folder = tmp_path / "remote"
    shutil.copytree(tiny_bert, folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "custom_bert.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class CustomConfig(BertConfig):\n    model_type = 'bert'\n"
        "class CustomBert(BertForSequenceClassification):\n    config_class = CustomConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "custom_bert.CustomConfig",
        "AutoModelForSequenceClassification": "custom_bert.CustomBert",
    }
    (folder / "config.json").write_text(json.dumps(config))

    model = ModelConfig(name_or_path=str(folder))
    assert model.trust_remote_code is False
    load_tokenizer(model)
    assert type(load_cross_encoder(model, 32).model).__name__ == "BertForSequenceClassification"
    assert not marker.exists()

    model.trust_remote_code = True
    assert type(load_cross_encoder(model, 32).model).__name__ == "CustomBert"
    assert marker.exists()
