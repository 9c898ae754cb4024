"""Keeping secrets (hub tokens, cloud keys) out of what a run writes: logs, model cards, metrics.

Two layers:

1. :func:`check_no_inline_credentials` refuses, before Ray starts, a path or URI that carries a
   credential (``s3://KEY:SECRET@bucket``, ``?secret_key=...``, a signed URL). Such a path would be
   printed by Ray's own logs, our error messages and the model card (the dataset name is taken
   from the path), where nothing downstream could mask it. Credentials belong in the environment
   (``AWS_*``, ``HF_TOKEN``) or the cluster's instance roles, which pyarrow and huggingface_hub read.
2. :func:`redact` masks, in any text we write (model card, ``metrics.json``, error lines), the
   values of secret-looking environment variables and strings shaped like tokens or keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from rerank_ray.errors import ConfigError

MASK = "***"

#: Environment variables that hold credentials, by name; any variable whose name contains one of
#: :data:`SECRET_NAME_PARTS` is treated the same way.
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_API_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "WANDB_API_KEY",
)
SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "ACCESS_KEY", "CREDENTIAL", "PRIVATE_KEY", "AUTH")
#: Values shorter than this are not masked wherever they appear (a 3-character value would mask
#: ordinary words); the patterns below still catch real token shapes.
MIN_SECRET_LENGTH = 8

#: Shapes of credentials: Hugging Face tokens, AWS access key ids, URI user:password parts and
#: the query parameters of signed URLs and pyarrow's S3 URIs.
TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?<=Bearer )[A-Za-z0-9._~+/=\-]+"),  # HTTP authorization headers (Ray's job API token)
)
USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
SECRET_QUERY = re.compile(
    r"(?P<name>[?&](?:access_key|secret_key|session_token|token|sig|signature|password|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential)=)"
    r"(?P<value>[^&\s#]+)",
    re.IGNORECASE,
)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret environment variables that are set, longest first."""
    variables: Mapping[str, str] = os.environ if environ is None else environ
    values = set()
    for name, value in variables.items():
        upper = name.upper()
        if not value or len(value) < MIN_SECRET_LENGTH:
            continue
        if upper in SECRET_ENV_VARS or (
            any(part in upper for part in SECRET_NAME_PARTS) and _looks_like_a_secret(value)
        ):
            values.add(value)
    return sorted(values, key=len, reverse=True)


def _looks_like_a_secret(value: str) -> bool:
    """For variables matched by name only (``MAX_TOKENS=100000000``, ``TOKEN_CACHE=/tmp/x`` are
    not secrets): no spaces, not a number, not a path."""
    return not (any(ch.isspace() for ch in value) or value.isdigit() or value.startswith(("/", "~", ".")))


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """``text`` with secret environment values, token shapes and URI credentials masked."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(MASK, text)
    text = USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return SECRET_QUERY.sub(lambda m: f"{m.group('name')}{MASK}", text)


def redact_obj(obj: Any, environ: dict[str, str] | None = None) -> Any:
    """A JSON-like object with every string (keys included) passed through :func:`redact`."""
    if isinstance(obj, str):
        return redact(obj, environ)
    if isinstance(obj, dict):
        return {redact_obj(k, environ): redact_obj(v, environ) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, environ) for v in obj]
    return obj


def inline_credential(path: str) -> str | None:
    """What credential ``path`` carries ("user:password@", "?secret_key="), or None."""
    match = USERINFO.match(path)
    if match:
        return f"{match.group('userinfo').split(':')[0][:4]}...@ (credentials in the URI)"
    query = SECRET_QUERY.search(path)
    if query:
        return f"{query.group('name').lstrip('?&')}... (a credential in the query string)"
    return None


def check_no_inline_credentials(paths: dict[str, list[str]]) -> None:
    """Refuse paths that carry credentials (``paths``: config key -> the paths written under it);
    the message never repeats the secret itself."""
    for key, values in paths.items():
        for value in values:
            found = inline_credential(value or "")
            if found:
                raise ConfigError(
                    f"{key} carries a credential ({found}): it would be written to logs and the model "
                    "card. Remove it from the path and pass it through the environment instead "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN) "
                    "or the cluster's instance role"
                )
