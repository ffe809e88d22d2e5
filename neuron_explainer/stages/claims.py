"""Unit claims: workers sharing one run directory never do the same unit; a dead worker's units are taken over.

Files under `<run>/claims/<stage>/`:

    workers/<owner>   one per live worker. Its mtime is the worker's heartbeat, refreshed by a thread every
                      quarter of the expiry; its text says which process it is.
    <unit>.<n>        a claim: a hard link to its owner's worker file, so it is exactly as fresh as its
                      owner. n is 0, or one more than the stale claim it took over.
    <unit>.done       the unit's rows were written before this file's mtime.
    <unit>.failed     the unit failed at this file's mtime.

Claiming is an exclusive `os.link` (atomic on local filesystems, NFS, Lustre and GPFS): of two workers
linking one name, one fails. A claim whose owner has not heartbeated for `expiry` seconds is stale, and so
is one whose owner ran on this machine and has exited (a rerun after a crash or a kill then continues at
once instead of waiting for the expiry). The next worker links `<unit>.<n+1>`, again exclusively, so one
taker wins; the stale claim stays until the unit is released, so the chain of claims is never broken
while a later one is live.

Done versus released: the owner writes the unit's rows, then `<unit>.done`, then removes its claims. A worker
looks for the done marker again after it has claimed a unit, so it never repeats a unit that another worker
finished after it read the stage table: it registered (its start) before reading the table, so a marker
older than its start is for rows it has read. A failed marker stops only workers that started before the
failure (as a rerun, a later worker retries it). The last worker to leave a stage removes the markers.
All the workers of a run must use the same expiry, and the clocks of the machines sharing the filesystem
must agree to within CLOCK_SLACK_SECONDS.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from neuron_explainer.errors import RunDirError

logger = logging.getLogger(__name__)

CLOCK_SLACK_SECONDS = 5.0
"""Done markers this much older than a worker's start still count for it (clock skew between machines)."""


class ClaimState(Enum):
    """What trying to claim a unit found."""

    ACQUIRED = "acquired"
    """This worker holds the unit now."""
    HELD = "held"
    """Another live worker holds it: try again later."""
    DONE = "done"
    """Another worker finished it after this worker started."""
    FAILED = "failed"
    """Another worker failed on it after this worker started (the next run retries it)."""


def claim_name(key: tuple[Any, ...]) -> str:
    """The file name of a unit's claims: `<layer>-<neuron>-<16 hex digits of the whole key>`."""
    plain = [k.item() if hasattr(k, "item") else k for k in key]
    digest = hashlib.sha256(json.dumps(plain, default=str).encode()).hexdigest()[:16]
    return f"{int(plain[0])}-{int(plain[1])}-{digest}"


class UnitClaims:
    """One worker's claims on the units of one stage (a context manager: registers, heartbeats, cleans up).

    Open it before reading which units are done: the registration time is what done markers are
    compared with.
    """

    def __init__(self, root: str | Path, stage: str, *, expiry_seconds: float) -> None:
        self.dir = Path(root) / "claims" / stage
        self.expiry = float(expiry_seconds)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.worker_file = self.dir / "workers" / self.owner
        self.held: dict[str, Path] = {}
        """Claim name -> the claim file this worker linked."""
        self.taken_over = 0
        """Stale claims of dead workers this worker took over."""
        self.started = 0.0
        """Filesystem time at registration."""
        self._inode = 0
        self._beat = (0.0, 0.0)  # (filesystem mtime, monotonic clock) of the last heartbeat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def poll_seconds(self) -> float:
        """How often to look again at units other workers hold."""
        return min(self.expiry / 4, 5.0)

    def __enter__(self) -> UnitClaims:
        """Register this worker and start its heartbeat thread."""
        (self.dir / "workers").mkdir(parents=True, exist_ok=True)
        self.worker_file.write_text(self._identity())
        self.heartbeat()
        self.started = self.now()
        self._thread = threading.Thread(target=self._beat_loop, name=f"claims-{self.dir.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Give up the claims still held (their units were not finished), deregister, remove unneeded markers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for name in list(self.held):
            if self._owned(name):
                self._release(name, None)
            else:  # taken over: removing it would break the chain of claims the new owner relies on
                self.held.pop(name)
        self.worker_file.unlink(missing_ok=True)
        self.cleanup()

    def _identity(self) -> str:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid()})

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.expiry / 4):
            self.heartbeat()

    def heartbeat(self) -> None:
        """Refresh this worker's file, and with it every claim it holds (they share its inode)."""
        try:
            os.utime(self.worker_file)
        except FileNotFoundError:
            # removed as dead: this worker stalled past the expiry, and its claims may be taken over. It
            # registers again; its old claims are no longer its own (another inode), so their rows are dropped.
            logger.warning("claims: %s was removed as dead; registering again", self.worker_file)
            self.worker_file.write_text(self._identity())
        stat = self.worker_file.stat()
        with self._lock:
            self._beat, self._inode = (stat.st_mtime, time.monotonic()), stat.st_ino

    def now(self) -> float:
        """Filesystem time now, as estimated from the last heartbeat (never ahead of it by more than the drift)."""
        with self._lock:
            mtime, at = self._beat
        return mtime + (time.monotonic() - at)

    def _marker(self, name: str) -> ClaimState | None:
        for state, slack in ((ClaimState.DONE, CLOCK_SLACK_SECONDS), (ClaimState.FAILED, 0.0)):
            try:
                mtime = (self.dir / f"{name}.{state.value}").stat().st_mtime
            except FileNotFoundError:
                continue
            if mtime >= self.started - slack:
                return state
        return None

    def acquire(self, key: tuple[Any, ...]) -> ClaimState:
        """Try to claim the unit `key` (a tuple starting with layer and neuron).

        Raises:
            RunDirError: the filesystem cannot make hard links (then use shards without claims).
        """
        name = claim_name(key)
        found = self._marker(name)
        if found is not None:
            return found
        seq = 0
        while True:
            path = self.dir / f"{name}.{seq}"
            if self._link(path):
                break
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                return ClaimState.HELD  # released a moment ago: look again later
            if self.now() - mtime <= self.expiry and not owner_exited(path):
                return ClaimState.HELD
            seq += 1
        found = self._marker(name)  # finished by its owner between the first look and the link
        if found is not None:
            path.unlink(missing_ok=True)
            return found
        with self._lock:
            self.held[name] = path
        if seq:
            self.taken_over += 1
            logger.info("claims: took over %s (its worker stopped heartbeating)", path.name)
        return ClaimState.ACQUIRED

    def _link(self, path: Path) -> bool:
        try:
            os.link(self.worker_file, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise RunDirError(
                    f"the filesystem of {self.dir} cannot make hard links, which unit claims need: set "
                    "workers.claim=false and give each worker its own shard (--shard i/N)"
                ) from None
            raise
        return True

    def owned(self, keys: list[tuple[Any, ...]]) -> list[bool]:
        """Whether this worker still holds each unit (False when another took it over after a stall)."""
        return [self._owned(claim_name(key)) for key in keys]

    def _owned(self, name: str) -> bool:
        path = self.held.get(name)
        if path is None:
            return False
        try:
            ours = path.stat().st_ino == self._inode
        except FileNotFoundError:
            return False
        return ours and not (self.dir / f"{name}.{int(path.suffix[1:]) + 1}").exists()

    def release(self, key: tuple[Any, ...], *, failed: bool = False) -> None:
        """Mark a unit whose rows are written done (or failed), then give up its claim."""
        self._release(claim_name(key), ClaimState.FAILED if failed else ClaimState.DONE)

    def forget(self, key: tuple[Any, ...]) -> None:
        """Drop a claim another worker took over, leaving its files to that worker."""
        with self._lock:
            self.held.pop(claim_name(key), None)

    def _release(self, name: str, outcome: ClaimState | None) -> None:
        with self._lock:
            path = self.held.pop(name, None)
        if path is None:
            return
        if outcome is not None:
            (self.dir / f"{name}.{outcome.value}").write_text(self.owner)  # before the claim goes: see above
            if outcome is ClaimState.DONE:
                (self.dir / f"{name}.{ClaimState.FAILED.value}").unlink(missing_ok=True)
        for seq in range(int(path.suffix[1:])):  # the stale claims this one took over
            (self.dir / f"{name}.{seq}").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Remove dead workers' files and, if no worker is left, the markers no later worker can need.

        A marker is needed by the live workers that started before it. The last worker to leave removes
        every marker older than CLOCK_SLACK_SECONDS (a worker registering meanwhile started after them:
        it reads their rows in the table), so one sweep per stage and batch stats the markers.
        """
        now, live = self.now(), 0
        workers = self.dir / "workers"
        for path in workers.iterdir() if workers.is_dir() else []:
            try:
                if now - path.stat().st_mtime > self.expiry or owner_exited(path):
                    path.unlink(missing_ok=True)  # its claims stay until taken over
                else:
                    live += 1
            except FileNotFoundError:
                continue
        if live:
            return
        cutoff = now - CLOCK_SLACK_SECONDS
        with os.scandir(self.dir) as entries:
            for entry in entries:
                if entry.name.endswith((".done", ".failed")):
                    try:
                        if entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
                    except FileNotFoundError:
                        pass


def owner_exited(claim: Path) -> bool:
    """Whether a claim's worker ran on this machine and its process no longer exists.

    Only a certain death counts: another machine's worker, an unreadable file or a live process (even one
    that reused the pid) leave the claim to the expiry.
    """
    try:
        info = json.loads(claim.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # no permission to signal it: it exists
        return False
    return False
