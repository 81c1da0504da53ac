"""The parent side of the sandbox: start the launcher's process, wait for it, kill its group, reap it.

:func:`prunelens.evaluation.sandbox.run_program` builds the command and the files;
:func:`run_child` runs it in a new session (so the whole process group can be killed), enforces the
wall-clock limit, kills the group and checks that no live member is left, all *before* reaping the
leader (its zombie keeps the group id from being reused), then reaps it for its exit status and CPU time.
The helpers that read what the child left behind (its captured output, its report pipe) are here too.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChildRun:
    """How the sandboxed process ended: ``returncode`` as :class:`subprocess.Popen` gives it, whether the
    wall-clock limit was reached, the wall time, the leader's ``rusage`` (None when it could not be
    reaped by ``wait4``) and the live group members left after the final kill."""

    pid: int
    returncode: int | None
    timed_out: bool
    wall_s: float
    rusage: Any
    leftover: tuple[int, ...]

    @property
    def cpu_s(self) -> float | None:
        return None if self.rusage is None else self.rusage.ru_utime + self.rusage.ru_stime


def _exited(pid: int) -> bool:
    """Whether ``pid`` has ended, without reaping it (so its process group id cannot be reused yet)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait until ``pid`` ends (True) or ``timeout_s`` passes (False); the process is not reaped."""
    deadline = time.monotonic() + timeout_s
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _exited(pid)
                if poller.poll(max(1, math.ceil(remaining * 1000))):
                    return True
        delay = 0.0005
        while True:
            if _exited(pid):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.01)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _live_group_members(pgid: int) -> list[int]:
    """Pids of processes in process group ``pgid`` that are still alive (zombies excluded), via ``/proc``."""
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def _finished_in_time(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether the process ended within ``timeout_s`` (on Linux without reaping it)."""
    if hasattr(os, "waitid"):
        return _wait_exit(proc.pid, timeout_s)
    try:  # not Linux: no way to wait without reaping
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group_and_reap(proc: subprocess.Popen) -> tuple[list[int], Any]:
    """Kill the whole group (on timeout, and any straggler otherwise), make sure no member is left, all
    before reaping the leader; returns the members still alive and the leader's ``rusage``."""
    _killpg(proc.pid)
    if proc.returncode is None and not hasattr(os, "waitid"):
        proc.wait()
    leftover: list[int] = []
    rusage = None
    if proc.returncode is None:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        deadline = time.monotonic() + 1.0
        while True:
            leftover = _live_group_members(proc.pid)
            if not leftover or time.monotonic() > deadline:
                break
            _killpg(proc.pid)
            time.sleep(0.01)
        _, status_word, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status_word)
    return leftover, rusage


def run_child(
    cmd: Sequence[str],
    *,
    cwd: str,
    env: dict[str, str],
    report_w: int,
    stdout_path: str,
    stderr_path: str,
    timeout_s: float,
) -> ChildRun:
    """Run ``cmd`` in a new session with stdin at EOF and its output captured to files; ``report_w`` (the
    write end of the report pipe) is passed to the child and closed here once it has started."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=True,
                pass_fds=(report_w,),
                close_fds=True,
            )
        finally:
            os.close(report_w)
        timed_out = False
        wall = 0.0
        try:
            timed_out = not _finished_in_time(proc, timeout_s)
            wall = time.monotonic() - t0
        finally:
            if not wall:
                wall = time.monotonic() - t0
            leftover, rusage = _kill_group_and_reap(proc)
    return ChildRun(proc.pid, proc.returncode, timed_out, wall, rusage, tuple(leftover))


def read_head(path: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` bytes of ``path`` decoded as UTF-8 (invalid bytes replaced), and whether the
    file held more."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return "", False
    truncated = len(data) > limit
    return data[:limit].decode("utf-8", errors="replace"), truncated


def read_report(fd: int) -> list[dict[str, Any]]:
    """The JSON objects the launcher wrote on the report pipe, one a line (other lines skipped)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    events = []
    for line in b"".join(chunks).splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events
