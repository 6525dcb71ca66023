"""One run of a stage per lake at a time: a lock file beside the lake's tables.

``<lake root>/_locks/<stage>.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local and
POSIX network filesystems) and holds the holder's pid, host, run date and start time as JSON. A
second start of the same stage on the same lake is refused with one line naming the holder. A lock
whose holder is gone (same host, pid no longer alive: a run killed with ``kill -9`` or by the OOM
killer) is stale and taken over; the caller records the killed run (see :mod:`mmpipeline.ops`).
A lock held from another host cannot be checked and is never taken over automatically.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from mmpipeline.context import StageError

log = logging.getLogger(__name__)


class LockHeld(StageError):
    """Another run of the stage holds the lake's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # a zombie (killed, not yet reaped by its parent) is not a live holder
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class StageLock:
    """``with StageLock(lake_root, stage, run_date) as lock:`` -- ``lock.stale`` is the holder info
    of a dead run that was taken over (None when the lock was free)."""

    def __init__(self, lake_root: str | os.PathLike, stage: str, run_date: dt.date | str):
        self.path = Path(lake_root) / "_locks" / f"{stage}.lock"
        self.stage = stage
        self.info = {"stage": stage, "pid": os.getpid(), "host": socket.gethostname(), "run_date": str(run_date),
                     "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self.stale: dict[str, Any] | None = None
        self._held = False

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except ValueError:  # a half-written lock: its writer died between create and write
            return {}

    def acquire(self) -> "StageLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StageError(f"cannot create the lock folder {self.path.parent} ({e.strerror or e}): "
                             "set lake.root to a writable folder (--set lake.root=... or MMP__LAKE__ROOT)") from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                h = self.holder()
                if h is None:
                    continue  # released meanwhile: try again
                same_host = h.get("host") in (None, self.info["host"])
                pid = h.get("pid")
                if same_host and (not isinstance(pid, int) or not _alive(pid)):
                    log.warning("lock %s: holder pid %s (run date %s, started %s) is gone; taking over",
                                self.path, pid, h.get("run_date"), h.get("started_at"))
                    self.stale = h
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockHeld(
                    f"stage {self.stage} is already running on this lake: pid {pid} on {h.get('host')} "
                    f"(run date {h.get('run_date')}, started {h.get('started_at')}); wait for it to finish, or "
                    f"if that run is dead remove {self.path}") from None
            except OSError as e:
                raise StageError(f"cannot create the lock {self.path} ({e.strerror or e}): "
                                 "set lake.root to a writable folder (--set lake.root=... or MMP__LAKE__ROOT)") from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self._held = True
            return self
        raise LockHeld(f"could not take the lock {self.path} (it keeps changing hands); try again")

    def release(self) -> None:
        if self._held:
            h = self.holder()
            if h is not None and h.get("pid") == self.info["pid"] and h.get("host") == self.info["host"]:
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "StageLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
