"""One driver per run: a lock file in the run's folder, held while the run trains.

Two ``rerank-ray train`` started with the same ``run.name`` and storage would otherwise both pass
the run-name check (neither finds a checkpoint yet) and train into one folder. The first to
create ``<run>/run.lock`` trains; the other stops with exit code 2, naming the run and the holder.

The lock survives a crash of its holder, and is then taken over: the holder refreshes the file
every ``run.lock_timeout_s / 5`` seconds, so a lock not refreshed for ``run.lock_timeout_s`` is
stale; one left by a process of this host that no longer exists is stale at once (a killed job
continued with ``--resume`` on the same machine). Taking a lock over is said on the console.

On a local or NFS folder the file is created with ``O_CREAT | O_EXCL``, atomic. Object storage
through pyarrow has no create-if-absent, so there the lock is written, then read back after a
pause: two drivers starting within that pause of each other are told apart by the token they
read back (the later writer wins), which covers drivers started seconds apart, not a tie.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from rerank_ray import storage
from rerank_ray.errors import ConfigError
from rerank_ray.redaction import redact

LOCK_FILE = "run.lock"
#: Object storage: how long a written lock is left before it is read back (see the module doc).
SETTLE_SECONDS = 2.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunLock:
    """The lock of the run ``name`` in the folder ``run_dir`` (a local path or a URI)."""

    run_dir: str
    name: str
    timeout_s: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def uri(self) -> str:
        return storage.join(self.run_dir, LOCK_FILE)

    def _holder(self) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}

    # -------------------------------------------------------------- taking and keeping it
    def acquire(self) -> RunLock:
        """Take the lock, or raise a ConfigError naming the run and who holds it."""
        filesystem, path = storage.filesystem(self.uri)
        parent = path.rsplit("/", 1)[0]
        filesystem.create_dir(parent, recursive=True)
        held = self._read(filesystem, path)
        if held is not None:
            stale = self._stale_because(held)
            if stale is None:
                raise ConfigError(self._refusal(held))
            print(
                f"[rerank-ray] taking over the lock of run {self.name!r} ({stale}; "
                f"it was held by {held['holder'].get('host')} pid {held['holder'].get('pid')})",
                flush=True,
            )
            again = self._read(filesystem, path)  # narrow the window in which another driver took it
            if again is not None and again["holder"].get("token") == held["holder"].get("token"):
                filesystem.delete_file(path)
        self._create(filesystem, path)
        threading.Thread(target=self._heartbeat, name="rerank-ray-lock", daemon=True).start()
        return self

    def _create(self, filesystem: pafs.FileSystem, path: str) -> None:
        body = json.dumps(self._holder()).encode()
        if isinstance(filesystem, pafs.LocalFileSystem):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise ConfigError(self._refusal(self._read(filesystem, path))) from None
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return
        with filesystem.open_output_stream(path) as f:
            f.write(body)
        time.sleep(SETTLE_SECONDS)
        held = self._read(filesystem, path)
        if held is None or held["holder"].get("token") != self.token:
            raise ConfigError(self._refusal(held))

    def _heartbeat(self) -> None:
        interval = max(1.0, self.timeout_s / 5)
        while not self._stop.wait(interval):
            try:
                filesystem, path = storage.filesystem(self.uri)
                held = self._read(filesystem, path)
                if held is None or held["holder"].get("token") != self.token:
                    return  # taken over (we looked dead) or released: nothing of ours to refresh
                if isinstance(filesystem, pafs.LocalFileSystem):
                    # Only the age counts: touching the file refreshes it without the instant a
                    # rewrite leaves it empty (another driver reading then sees no holder).
                    os.utime(path)
                    continue
                with filesystem.open_output_stream(path) as f:  # an object store replaces it whole
                    f.write(json.dumps(held["holder"]).encode())
            except OSError:
                continue  # storage briefly unreachable: the next beat tries again

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still ours."""
        self._stop.set()
        try:
            filesystem, path = storage.filesystem(self.uri)
            held = self._read(filesystem, path)
            if held is not None and held["holder"].get("token") == self.token:
                filesystem.delete_file(path)
        except OSError:
            pass  # a lock left behind is taken over once stale

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -------------------------------------------------------------- reading someone else's
    @staticmethod
    def _read(filesystem: pafs.FileSystem, path: str) -> dict | None:
        """``{"holder": ..., "age": seconds since its last refresh}``, or None without a lock."""
        info = filesystem.get_file_info(path)
        if info.type != pafs.FileType.File:
            return None
        try:
            with filesystem.open_input_stream(path) as f:
                holder = json.loads(f.read().decode("utf-8") or "{}")
        except (OSError, ValueError):
            holder = {}  # a lock cut short by a crash while writing it: only its age counts
        age = time.time() - info.mtime.timestamp() if info.mtime is not None else float("inf")
        return {"holder": holder if isinstance(holder, dict) else {}, "age": age}

    def _stale_because(self, held: dict) -> str | None:
        holder = held["holder"]
        if held["age"] > self.timeout_s:
            return f"not refreshed for {held['age']:.0f} s, more than run.lock_timeout_s={self.timeout_s:g}"
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return f"its process {pid} on this host has ended"
        return None

    def _refusal(self, held: dict | None) -> str:
        holder = (held or {}).get("holder", {})
        since = holder.get("since")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, float) else "?"
        return (
            f"run {self.name!r} is being trained by another rerank-ray process ({holder.get('host', '?')} "
            f"pid {holder.get('pid', '?')}, since {started}; lock {redact(self.uri)}). Wait for it to end, or "
            f"choose another run.name; a lock whose holder died is taken over once it is "
            f"{self.timeout_s:g} s old (run.lock_timeout_s), or at once on the same host"
        )
