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
from collections.abc import Callable
from typing import Any
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
    the old contents are deleted, every file is uploaded, and :data:`COMPLETE_MARKER` goes last
    (:func:`upload_folder`), so a folder without it is an interrupted export.
    """
    if not is_uri(target):
        _publish_local(local_dir, resolve(target))
        return
    import pyarrow.fs as pafs

    fs, inner = filesystem(target)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(inner, missing_dir_ok=True)
    upload_folder(local_dir, fs, inner, marker=COMPLETE_MARKER)


def upload_folder(
    local_dir: str,
    fs: Any,
    destination: str,
    marker: str,
    first: str | None = None,
    after_first: Callable[[], None] | None = None,
) -> None:
    """Copy the files of ``local_dir`` into ``destination`` on ``fs``, the file ``marker`` last:
    whoever finds the marker finds every other file whole (object stores have no rename to make
    a folder appear at once). The one uploader of the exports and the checkpoints.

    ``first``: an entry to copy before the others (a checkpoint's model, its largest part);
    ``after_first``: called once the first entry is there (fault injection in the tests).
    ``use_threads=False``: pyarrow's threaded S3 upload can hang (apache/arrow#32372); Ray
    Train's own checkpoint upload turns it off for the same reason."""
    import pyarrow.fs as pafs

    fs.create_dir(destination, recursive=True)
    local_fs = pafs.LocalFileSystem()
    entries = sorted((e for e in os.listdir(local_dir) if e != marker), key=lambda name: (name != first, name))
    for i, entry in enumerate(entries):
        source = os.path.join(local_dir, entry)
        target = f"{destination.rstrip('/')}/{entry}"
        if os.path.isdir(source):
            fs.create_dir(target, recursive=True)
        pafs.copy_files(source, target, source_filesystem=local_fs, destination_filesystem=fs, use_threads=False)
        if i == 0 and after_first is not None:
            after_first()
    if os.path.isfile(os.path.join(local_dir, marker)):
        pafs.copy_files(
            os.path.join(local_dir, marker),
            f"{destination.rstrip('/')}/{marker}",
            source_filesystem=local_fs,
            destination_filesystem=fs,
            use_threads=False,
        )


def upload_files(local_dir: str, target: str) -> None:
    """Copy the files of ``local_dir`` into the URI folder ``target``, leaving what else is there
    (a search's report files next to its trials)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(target)
    fs.create_dir(inner, recursive=True)
    # use_threads=False: see upload_folder.
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
