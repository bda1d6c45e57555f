"""Who holds a mailbox's lease: an id for this process that another process of the same host can
check, so that the lease of a process that is gone (SIGKILL, OOM) is free at once.

The id reads `host-pid-random-tSTART-KEY`:
- `START` is the process's start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot),
  so that another process given the same pid later is not taken for the holder;
- `KEY` names the kernel and pid namespace the pid belongs to (a hash of the boot id and the pid
  namespace), so that pids are only ever compared within the namespace they came from: two
  machines or containers with the same host name, or the same machine after a reboot, never judge
  each other's holders.

Where this cannot be read (no `/proc`: macOS, Windows) the id is the older `host-pid-random`,
and such holders, like those written by earlier versions, are never judged: their lease expires
as before. Judging errs one way only: a holder is gone when its host, kernel and namespace are
this process's and its pid is not running with its start time; every doubt means alive.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
HOST_CHARS = 120  # of the host name kept in an id (the owner column holds 200)
_NEW = re.compile(
    r"^(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{6})-t(?P<start>\d+)-(?P<key>[0-9a-f]{8})$"
)
_OLD = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{6})$")


@dataclass(frozen=True)
class Holder:
    """A parsed holder id; `start` and `key` are None in the older format (or any other id)."""

    raw: str
    host: str | None = None
    pid: int | None = None
    start: int | None = None
    key: str | None = None

    def describe(self) -> str:
        """`pid 123 on web1`, for people; the raw id when it names no process."""
        if self.pid is None:
            return self.raw
        return f"pid {self.pid} on {self.host}"


def parse(owner: str) -> Holder:
    """The parts of a holder id; ids that are neither format parse to `Holder(raw)`."""
    found = _NEW.match(owner)
    if found:
        return Holder(
            owner,
            found["host"],
            int(found["pid"]),
            int(found["start"]),
            found["key"],
        )
    found = _OLD.match(owner)
    if found:
        return Holder(owner, found["host"], int(found["pid"]))
    return Holder(owner)


def _hostname() -> str:
    return socket.gethostname()[:HOST_CHARS]


def _stat(pid: int, proc: Path) -> tuple[str, int] | None:
    """The state letter and start time of `pid`, None when no such process runs.

    Raises OSError when it cannot tell (no /proc, no permission)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime)


@functools.cache
def _key(proc: Path = PROC) -> str | None:
    """This kernel's boot id and this process's pid namespace, hashed; None when unknown."""
    try:
        boot = (proc / "sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat(proc / "self/ns/pid").st_ino
        # With `hidepid`, other users' processes are hidden: a missing pid would prove nothing.
        if not (proc / "1" / "stat").exists() and os.getpid() != 1:
            return None
    except OSError:
        return None
    return hashlib.sha256(f"{boot}/{namespace}".encode()).hexdigest()[:8]


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """The start time of a running `pid` (clock ticks since boot); None when unknown or gone."""
    try:
        stat = _stat(pid, proc)
    except (OSError, ValueError, IndexError):
        return None
    return stat[1] if stat is not None else None


def holder_id(*, pid: int | None = None, start: int | None = None, token: str | None = None) -> str:
    """The holder id of process `pid` (this one by default) on this host; the older format
    when its start time or this host's key cannot be read."""
    pid = os.getpid() if pid is None else pid
    token = token or secrets.token_hex(3)
    start = start_time(pid) if start is None else start
    key = _key()
    if start is None or key is None:
        return f"{_hostname()}-{pid}-{token}"
    return f"{_hostname()}-{pid}-{token}-t{start}-{key}"


def is_gone(owner: str, proc: Path = PROC) -> bool:
    """True only when `owner` is certainly a process of this host that is no longer running
    (its pid is free, a zombie, or belongs to a process started at another time)."""
    holder = parse(owner)
    if holder.start is None or holder.pid is None:
        return False  # an older id, or none of ours: wait for its lease to expire
    if holder.host != _hostname() or holder.key != _key(proc):
        return False  # another host, kernel or pid namespace: never judged by its pid
    try:
        stat = _stat(holder.pid, proc)
    except (OSError, ValueError, IndexError):
        return False
    if stat is None:
        return True
    state, started = stat
    return state in ("Z", "X") or started != holder.start
