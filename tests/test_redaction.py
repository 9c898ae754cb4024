"""Secrets out of what a run prints and writes, and paths that carry credentials refused
(rerank_ray.redaction)."""

from __future__ import annotations

import pytest

from rerank_ray.config import Config
from rerank_ray.errors import ConfigError
from rerank_ray.redaction import redact, redact_obj


def test_redact_masks_secret_values_and_token_shapes():
    environ = {
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz012345",
        "MY_SERVICE_PASSWORD": "hunter2hunter2",
        "HOME": "/root",
    }
    text = (
        "token hf_abcdefghijklmnopqrstuvwxyz012345 pw hunter2hunter2 home /root "
        "key AKIAIOSFODNN7EXAMPLE other hf_ZZZZZZZZZZZZZZZZZZZZZZZZZZ "
        "s3://AKID:SECRET@bucket/x gs://b/x?X-Goog-Signature=abc123&ok=1"
    )
    out = redact(text, environ)
    for secret in ("hf_abcdefghij", "hunter2", "AKIAIOSFODNN7EXAMPLE", "hf_ZZZZ", "AKID:SECRET", "abc123"):
        assert secret not in out, out
    assert "/root" in out and "s3://***@bucket/x" in out and "ok=1" in out
    assert redact_obj({"a": [text], "hf_abcdefghijklmnopqrstuvwxyz012345": 1}, environ) == {"***": 1, "a": [out]}
    # Variables matched only by name are masked when their value looks like a secret.
    settings = {"MAX_TOKENS": "100000000", "TOKEN_CACHE": "/tmp/token-cache", "MY_API_KEY": "k3y-abcdefgh"}
    assert redact("max 100000000 in /tmp/token-cache with k3y-abcdefgh", settings) == (
        "max 100000000 in /tmp/token-cache with ***"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.train", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@bucket/train/"),
        ("run.storage_path", "s3://bucket/runs?access_key=AKIA&secret_key=wJalrXUtnFEMI"),
        ("model.name_or_path", "https://user:pa55word@models.example.com/m"),
    ],
)
def test_paths_with_credentials_are_refused(tiny_bert, key, value):
    raw = {"model": {"name_or_path": str(tiny_bert)}, "data": {"train": ["x.jsonl"]}}
    section, field = key.split(".")
    raw.setdefault(section, {})[field] = [value] if key == "data.train" else value
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(raw)
    message = str(caught.value)
    assert message.startswith(key) and "environment" in message
    assert "wJalrXUtnFEMI" not in message and "pa55word" not in message
