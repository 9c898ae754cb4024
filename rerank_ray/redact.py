"""Keep secrets out of what a run prints and writes: logs, ``metrics.json``, the model card.

Two kinds of secret can reach a run's text. Credentials inside a URI: ``s3://KEY:SECRET@bucket/x``
(pyarrow reads S3 keys from the user-info part), a signed URL's ``?X-Amz-Signature=...``, a
``?token=...``. And the values of secret environment variables (cloud keys, the Hugging Face
token, Ray's ``RAY_AUTH_TOKEN``), which can surface inside an error message. Both are replaced
with ``***`` in everything rerank-ray prints or writes. Ray's own logs are Ray's: keep
credentials out of URIs on a cluster (instance roles, or the provider's environment variables).
"""

from __future__ import annotations

import os
import re

MASK = "***"

#: Environment variables whose values are secrets, by name.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY|AUTH", re.IGNORECASE)
#: ... except those that hold a file's path (RAY_AUTH_TOKEN_PATH, GOOGLE_APPLICATION_CREDENTIALS).
PATH_NAME = re.compile(r"(_PATH|_FILE|_DIR|APPLICATION_CREDENTIALS)$", re.IGNORECASE)
#: Shorter values would mask ordinary words ("true", "1").
MIN_SECRET_LENGTH = 8

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s?#'\"]+@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:access_key|secret_key|secret|session_token|security_token|token|password|"
    r"sig|signature|credential|x-amz-signature|x-amz-credential|x-amz-security-token|api_key|key)=)"
    r"[^&\s#'\"]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>Bearer\s+)[A-Za-z0-9._~+/=\-]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}")


def secret_env_values() -> list[str]:
    """Values of the secret environment variables of this process, longest first."""
    values = {
        value
        for name, value in os.environ.items()
        if SECRET_NAME.search(name) and not PATH_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with URI credentials, bearer and Hugging Face tokens, and secret environment
    variable values replaced by ``***``."""
    if not text:
        return text
    for value in secret_env_values():
        text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m['key']}{MASK}", text)
    return _HF_TOKEN.sub(f"hf_{MASK}", text)
