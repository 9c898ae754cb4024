"""A real S3 API on 127.0.0.1: moto's server (``moto[server]``, in the ``dev`` extra), for storage tests.

The run reaches it the way any S3-compatible store (MinIO, Ceph, R2) is reached: pyarrow options in
the URI's query, ``s3://bucket/prefix?endpoint_override=127.0.0.1:PORT&scheme=http``, and the keys
in the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``: :meth:`LocalS3.credentials`).
A URI with keys in it (``secret=True``) is what a run must refuse: the fake keys must never show up
in what a run prints or writes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FAKE_KEY_ID = "AKIAFAKEKEYINURI0001"
FAKE_SECRET = "uriSecret/FAKE+0123456789abcdefghij"


class LocalS3:
    def __init__(self, log_dir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = log_dir / "moto.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError("moto server did not start in 60 s")

    @staticmethod
    def credentials() -> dict[str, str]:
        """Fake keys for the environment; moto's server accepts any."""
        return {"AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}

    def uri(self, bucket: str, prefix: str = "", secret: bool = False) -> str:
        """``s3://[KEY:SECRET@]bucket/prefix?endpoint_override=...&scheme=http``."""
        credentials = f"{FAKE_KEY_ID}:{FAKE_SECRET.replace('/', '%2F').replace('+', '%2B')}@" if secret else ""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{credentials}{path}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def make_bucket(self, bucket: str) -> None:
        self.filesystem(bucket, allow_bucket_creation=True).create_dir(bucket)

    def filesystem(self, bucket: str, **options):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key=FAKE_KEY_ID,
            secret_key=FAKE_SECRET,
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            **options,
        )

    def files(self, bucket: str) -> dict[str, int]:
        """Every object in the bucket: path -> size."""
        import pyarrow.fs as pafs

        fs = self.filesystem(bucket)
        infos = fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
        return {i.path: i.size for i in infos if i.type == pafs.FileType.File}

    def download(self, bucket: str, path: str, local: Path) -> Path:
        import pyarrow.fs as pafs

        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(local), source_filesystem=self.filesystem(bucket))
        return local

    def read(self, bucket: str, path: str) -> bytes:
        with self.filesystem(bucket).open_input_stream(path) as f:
            return f.read()

    def log_text(self) -> str:
        """The server's request log so far (one line per request)."""
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        return len(self.log_text())

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.log.close()
