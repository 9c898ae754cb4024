"""Where a run's files live: a local folder (or an NFS mount) or a URI that pyarrow opens.

``run.storage_path`` and ``run.output_dir`` may be local paths or URIs: ``s3://bucket/prefix``,
``gs://bucket/prefix``, or any other scheme ``pyarrow.fs.FileSystem.from_uri`` knows. A URI may
carry pyarrow's options as a query string, e.g. an S3-compatible endpoint:
``s3://bucket/runs?endpoint_override=minio.internal:9000&scheme=http``. Paths are therefore
joined *before* the query (``os.path.join`` would append to it), and every filesystem access goes
through ``from_uri`` so the options apply.

Ray Train writes the checkpoints to the same place (``RunConfig(storage_path=...)`` resolves it
with the same ``from_uri``), each from the node of the worker that reported it: a multi-node run
needs a place every node reaches (object storage or a shared mount), never one node's disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from urllib.parse import urlsplit, urlunsplit

#: Written last into an exported model folder; a folder without it is an interrupted export.
COMPLETE_MARKER = "metrics.json"


def is_uri(path: str) -> bool:
    """A remote location (``s3://``, ``gs://``, ...); ``file://`` counts as local."""
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> str:
    """A URI as it is; a local path absolute (``~`` expanded, ``file://`` dropped)."""
    if is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def join(base: str, *parts: str) -> str:
    """``base/part/...``, keeping a URI's query string (its pyarrow options) at the end."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    split = urlsplit(base)
    path = "/".join([split.path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((split.scheme, split.netloc, path, split.query, split.fragment))


def filesystem(path: str):
    """(pyarrow filesystem, path on it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), resolve(path)


def is_empty_file(path: str) -> bool:
    """A file of 0 bytes (local or URI)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    return info.type == pafs.FileType.File and info.size == 0


def is_file(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def publish_dir(local_dir: str, target: str) -> None:
    """Put the finished folder ``local_dir`` at ``target``, replacing what was there.

    Local or NFS: the folder is copied next to the target and renamed into place, so the target
    is either the old export or the new one, never a mix or a half. Object stores have no rename:
    the old contents are deleted, every file is uploaded, and :data:`COMPLETE_MARKER` goes last,
    so a folder without it is an interrupted export.
    """
    if not is_uri(target):
        _publish_local(local_dir, resolve(target))
        return
    import pyarrow.fs as pafs

    fs, inner = filesystem(target)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(inner, missing_dir_ok=True)
    fs.create_dir(inner, recursive=True)
    marker = os.path.join(local_dir, COMPLETE_MARKER)
    held_back = None
    if os.path.isfile(marker):
        held_back = tempfile.mkdtemp(prefix="rerank-marker-")
        shutil.move(marker, os.path.join(held_back, COMPLETE_MARKER))
    try:
        # use_threads=False: pyarrow's threaded S3 upload is unsafe (apache/arrow#32372; Ray
        # Train's own checkpoint upload turns it off for the same reason).
        pafs.copy_files(local_dir, inner, destination_filesystem=fs, use_threads=False)
        if held_back:
            pafs.copy_files(
                os.path.join(held_back, COMPLETE_MARKER),
                f"{inner.rstrip('/')}/{COMPLETE_MARKER}",
                destination_filesystem=fs,
            )
    finally:
        if held_back:
            shutil.move(os.path.join(held_back, COMPLETE_MARKER), marker)
            shutil.rmtree(held_back, ignore_errors=True)


def upload_files(local_dir: str, target: str) -> None:
    """Copy the files of ``local_dir`` into the URI folder ``target``, leaving what else is there
    (a search's report files next to its trials)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(target)
    fs.create_dir(inner, recursive=True)
    # use_threads=False: see publish_dir.
    pafs.copy_files(local_dir, inner, destination_filesystem=fs, use_threads=False)


def _publish_local(local_dir: str, target: str) -> None:
    parent = os.path.dirname(target.rstrip("/")) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    old = None
    try:
        fresh = os.path.join(staging, "new")
        shutil.copytree(local_dir, fresh)
        if os.path.exists(target):
            old = os.path.join(staging, "old")
            os.rename(target, old)
        os.rename(fresh, target)
    except BaseException:
        if old and not os.path.exists(target):
            os.rename(old, target)  # put the previous export back
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
