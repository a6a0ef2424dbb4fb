"""One agent per state directory: an exclusive `flock` on `state_dir/agent.lock`, which names its holder.

Two agents on one state directory would both send (and ack) the same outbox and overwrite each
other's detection state. The lock file holds the holder's pid, host, agent id and start time, so
the second agent can say who has it. The kernel drops a `flock` when its process dies, however
it dies, so a lock left behind by `kill -9` or a power cut never blocks the next start; the file
itself stays (removing it could let two processes lock two different files of the same name).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Final, Self

from lifeline.errors import LifelineError

LOCK_FILE: Final = "agent.lock"
#: How long the second agent waits for the holder to finish writing its name into the file.
_READ_HOLDER_S: Final = 1.0


class StateDirInUse(LifelineError):
    """Another process holds the state directory's lock; the message names it."""


class StateDirLock:
    """The exclusive lock of one state directory, held from `acquire` until `release` or exit."""

    def __init__(self, state_dir: Path, *, agent_id: str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_FILE
        self.agent_id = agent_id
        self._fd: int | None = None

    def acquire(self) -> Self:
        """Take the lock or raise StateDirInUse naming the holder (LifelineError if the
        directory cannot be made or the file opened)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LifelineError(f"agent.state_dir {self.state_dir}: cannot create the lock file "
                                f"{self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LifelineError(f"agent.state_dir {self.state_dir}: cannot lock {self.path}: "
                                    f"{exc.strerror or exc}") from exc
            raise StateDirInUse(
                f"agent.state_dir {self.state_dir} is in use by {self.holder()}: two agents on one "
                f"state directory would send the same outbox twice and overwrite each other's "
                f"detection state. Stop that process, or give this agent its own agent.state_dir "
                f"(lock: {self.path})") from None
        self._fd = fd
        self._write_holder(fd)
        return self

    def _write_holder(self, fd: int) -> None:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nagent={self.agent_id}\n"
                f"started={started}\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
        except OSError:
            pass  # the lock holds without the note (a full disk): the second agent says "unknown"

    def holder(self) -> str:
        """Who holds the lock, as the holder wrote it: 'lifeline agent pid 123 (agent a) on host h
        since T', or 'another process' while the file says nothing."""
        deadline = time.monotonic() + _READ_HOLDER_S
        fields: dict[str, str] = {}
        while True:
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            if "pid" in fields or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the holder has the lock but has not written its name yet
        if "pid" not in fields:
            return "another process (it has not written its pid into the lock file)"
        return (f"lifeline agent pid {fields['pid']} (agent {fields.get('agent', '?')}) on host "
                f"{fields.get('host', '?')} since {fields.get('started', '?')}")

    def release(self) -> None:
        """Drop the lock (the file stays; see the module docstring)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
