"""Run model-generated Python code against benchmark tests in a sandbox (pass@1 for HumanEval / MBPP).

Each program runs in its **own process** (``python -I -B -X utf8 [-S] -c <launcher>``) started in a new
session, so the whole process group can be killed. Before the program's first line runs, the launcher
applies, in this order:

1. **Namespaces (Linux, best effort).** It tries ``unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWNET)``, then
   ``CLONE_NEWUSER|CLONE_NEWNET``, ``CLONE_NEWNS|CLONE_NEWNET`` (works only with privileges), then
   ``CLONE_NEWNET`` alone, and keeps the first that works.

   * A new **network namespace** has only a loopback interface, and it is down: no connection can be made,
     not even to ``127.0.0.1`` of the host.
   * A new **user namespace** (own uid/gid mapped to itself) lets an unprivileged user create the other two,
     and leaves the program no capability in the host's namespace (root included: it keeps uid 0, hence
     owner access to root's files, but loses ``CAP_DAC_OVERRIDE``, ``CAP_SYS_ADMIN``...).
   * A new **mount namespace** (propagation made private first, so nothing leaks to the host) is used to
     remount every mount point **read-only** except the sandbox directory, on which a size-limited ``tmpfs``
     is mounted (``disk_mb``). The program can then not write, delete or rename anything outside its
     directory, and not fill the disk. A second, nested user+mount namespace then *locks* the read-only flags,
     so even code that reaches ``mount(2)`` cannot make them writable again.

2. **Resource limits** (``setrlimit``): ``RLIMIT_CPU`` (soft ``cpu_s``: the kernel sends SIGXCPU, hard one
   second later: SIGKILL), ``RLIMIT_AS`` (``memory_mb``: large allocations raise ``MemoryError``),
   ``RLIMIT_FSIZE`` (``max_file_mb``, also bounds the captured stdout/stderr files), ``RLIMIT_CORE = 0`` and
   ``RLIMIT_NPROC`` (``max_processes``; counted per user namespace since Linux 5.14, else over all the user's
   processes, which the launcher adds to the limit). The kernel never enforces ``RLIMIT_NPROC`` for uid 0, not
   even inside a user namespace, so **for root, fork loops are stopped by the guard below** (and the
   process-group kill and the CPU/wall-clock limits), not by the kernel.

3. **A Python-level guard** (``guard=True``, the default) that replaces destructive functions with ones that
   raise ``PermissionError``: process creation and signals (``os.fork``, ``os.forkpty``, ``os.system``,
   ``os.popen``, ``os.exec*``, ``os.posix_spawn*``, ``os.kill``, ``os.killpg``, ``subprocess`` through
   ``_posixsubprocess.fork_exec``), ``resource.setrlimit``/``prlimit``, socket creation and name resolution
   (``_socket.socket``, ``socketpair``, ``getaddrinfo``...), ``ctypes`` imports, and **writes outside the
   sandbox directory**: ``open``/``io.open``/``os.open`` in a write mode, ``os.remove``, ``unlink``,
   ``rmdir``, ``rename``, ``replace``, ``mkdir``, ``link``, ``symlink``, ``truncate``, ``chmod``, ``chown``,
   ``utime``... Paths are resolved, symlinks and ``dir_fd`` included, so ``shutil.rmtree``, ``shutil.move``
   and ``pathlib`` are covered too. ``/dev/null`` stays writable.

The process runs with a minimal environment (``PATH``, ``HOME``/``TMPDIR`` pointing into its throwaway
working directory, ``LANG``; nothing of the parent's environment, no secrets, no ``PYTHONPATH``), in isolated
mode (``-I``) and by default without ``site`` (``-S``: only the standard library is importable), with stdin
at EOF. The parent enforces the wall-clock limit (``timeout_s``) and, after the program ends or times out,
kills the whole process group with SIGKILL and checks that no live member is left
(``ExecResult.leftover_processes``). The working directory is deleted afterwards.

The program is executed with ``__name__ == "__sandbox__"`` (like the reference harnesses, which ``exec``
it), so an ``if __name__ == "__main__":`` block in generated code does not run. A program that calls
``sys.exit()`` before it finishes, or ends the process by other means, is not counted as passed.

**What is and is not guaranteed.** This is *not* a security boundary against a determined attacker: it
contains the usual accidents of generated code (infinite loops, huge allocations, fork loops, deleting or
overwriting files, network calls, flooding output). The Python guard can be bypassed by code that means to
(the original functions stay reachable through closures, ``gc``, ``_io.FileIO``...). The kernel-level
protections (rlimits, namespaces, locked read-only remount, process-group kill) do not depend on the guard,
but the namespaces are only *best effort*: where user namespaces are disabled (some distributions and
containers) and the process is not privileged, the network and filesystem protections fall back to the
Python guard alone. ``ExecResult.protections`` and :func:`sandbox_protections` report which protections
were active.

Other known limits:

* reading files outside the sandbox is allowed (the program's only output channel is its captured output);
* the kernel does not apply ``RLIMIT_NPROC`` to root, so as root a fork loop is only stopped by the guard;
* a forked child that deliberately calls ``setsid()`` (possible only once the guard is bypassed) escapes the
  process-group kill (there is no PID namespace); it stays bounded by ``RLIMIT_CPU`` and, if not root,
  ``RLIMIT_NPROC``;
* without the mount namespace the program can still fill its own directory, ``max_file_mb`` per file, until
  ``timeout_s``; with it, the ``tmpfs`` (``disk_mb``) uses memory, not disk;
* memory is limited per process (``RLIMIT_AS``, virtual memory), not per process tree;
* the program could write to the launcher's result pipe and forge a pass; generated code does not do that
  by accident.

Linux is the target; elsewhere only the rlimits, the guard and the timeout apply.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from prunelens.evaluation.sandbox_process import ChildRun, read_head, read_report, run_child

__all__ = [
    "ExecResult",
    "STATUSES",
    "check_program",
    "humaneval_program",
    "mbpp_program",
    "run_many",
    "run_program",
    "sandbox_protections",
]

#: Possible values of :attr:`ExecResult.status`.
STATUSES = ("passed", "failed", "error", "timeout", "killed")

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed run.

    ``status`` is one of :data:`STATUSES`:

    * ``"passed"``: the program ran to its end and the process exited with code 0;
    * ``"failed"``: the program raised ``AssertionError`` (a benchmark test failed);
    * ``"error"``: any other exception (``SyntaxError``, ``MemoryError``, ``PermissionError`` from the
      guard...), ``sys.exit()`` before the end, or the process ending without the launcher's completion
      record;
    * ``"timeout"``: the wall-clock limit was reached and the process group was killed;
    * ``"killed"``: the process died from a signal it got before the wall-clock limit (SIGXCPU at the CPU-time
      limit, SIGKILL at the hard CPU-time limit or from the out-of-memory killer, SIGSEGV...).

    ``stdout``/``stderr`` hold at most ``max_output_bytes`` bytes each (decoded as UTF-8, invalid bytes
    replaced); ``*_truncated`` says whether more was written. ``exception`` is the class name of the exception
    that ended the program (``"AssertionError"``, ``"SyntaxError"``, ``"SystemExit"``...), ``detail`` a
    one-line explanation, ``cpu_s`` the CPU time of the program's main process, ``protections`` what the
    launcher set up (see :func:`sandbox_protections`; empty if the process died before reporting), ``pid`` the
    process (and process group) id, and ``leftover_processes`` how many live processes of its group remained
    after the final kill (expected 0).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float | None = None
    exception: str | None = None
    detail: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    protections: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    leftover_processes: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ------------------------------------------------------------------------------------------------------------
# Program assembly
# ------------------------------------------------------------------------------------------------------------


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program the reference HumanEval harness runs: ``prompt + completion``, the ``test`` code (which
    defines ``check(candidate)``), then ``check(entry_point)``."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"


def mbpp_program(code: str, test_list: Sequence[str], test_setup_code: str = "") -> str:
    """The MBPP program: the solution ``code``, then ``test_setup_code`` (it may use names the code defines,
    e.g. MBPP task 367 builds a tree of the solution's ``Node``), then the ``assert`` lines of
    ``test_list``."""
    if isinstance(test_list, str):
        test_list = [test_list]
    parts = [code]
    if test_setup_code and test_setup_code.strip():
        parts.append(test_setup_code)
    parts.append("\n".join(test_list))
    return "\n".join(parts) + "\n"


def check_program(
    program: str, test_code: str, entry_point: str | None = None, **run_kwargs: Any
) -> ExecResult:
    """Run ``program`` followed by ``test_code`` in the sandbox.

    With ``entry_point`` (HumanEval form) ``test_code`` must define ``check(candidate)`` and the program ends
    with ``check(entry_point)``; without it (MBPP form) ``test_code`` is the assert lines themselves. Keyword
    arguments go to :func:`run_program`.
    """
    source = program + "\n" + test_code + "\n"
    if entry_point is not None:
        if not entry_point.isidentifier():
            raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
        source += f"check({entry_point})\n"
    return run_program(source, **run_kwargs)


# The launcher runs inside the child, before the program: a module of its own, run by path
# (standard library only; see its docstring).
_LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")


# ------------------------------------------------------------------------------------------------------------
# Parent side (the process itself: prunelens.evaluation.sandbox_process)
# ------------------------------------------------------------------------------------------------------------


def _check_limits(
    source: Any,
    timeout_s: float,
    cpu_s: float | None,
    memory_mb: int | None,
    max_output_bytes: int,
    max_file_mb: float,
    max_processes: int,
    disk_mb: int,
) -> None:
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    if not timeout_s or timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if cpu_s is not None and cpu_s <= 0:
        raise ValueError(f"cpu_s must be > 0, got {cpu_s!r}")
    if memory_mb is not None and memory_mb <= 0:
        raise ValueError(f"memory_mb must be > 0 or None, got {memory_mb!r}")
    if max_output_bytes < 0 or max_file_mb <= 0 or max_processes < 1 or disk_mb < 0:
        raise ValueError("max_output_bytes must be >= 0, max_file_mb > 0, max_processes >= 1, disk_mb >= 0")


def _child_environment(work: str) -> dict[str, str]:
    """Nothing of the parent's environment: a fixed ``PATH``, home and temporary folders in ``work``."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "TMPDIR": work,
        "TMP": work,
        "TEMP": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _write_program(root: str, source: str) -> tuple[str, str]:
    """The program's working directory (``root/work``) and the program file beside it."""
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    program_path = os.path.join(root, "program.py")
    with open(program_path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(source)
    return work, program_path


def _launcher_command(python: str, allow_site_packages: bool, cfg: dict[str, Any]) -> list[str]:
    """Isolated mode, no bytecode files, UTF-8; without ``site`` unless site-packages are allowed."""
    cmd = [python, "-I", "-B", "-X", "utf8"]
    if not allow_site_packages:
        cmd.append("-S")
    return cmd + [str(_LAUNCHER), json.dumps(cfg)]


def _launcher_records(events: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The protections the launcher reported at its start, and its end record (None if it never came)."""
    start = next((e for e in events if e.get("event") == "start"), {})
    end = next((e for e in events if e.get("event") == "end"), None)
    protections = start.get("protections", {}) if isinstance(start.get("protections"), dict) else {}
    return protections, end


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _killed_detail(sig: int, cpu_used: float | None, cpu_limit: int) -> str:
    """Why a process that died from signal ``sig`` (before the wall-clock limit) died."""
    if sig == signal.SIGXCPU:
        return f"CPU-time limit of {cpu_limit} s exceeded (SIGXCPU)"
    if sig == signal.SIGKILL and cpu_used is not None and cpu_used >= cpu_limit:
        return f"CPU-time limit of {cpu_limit} s exceeded (SIGKILL at the hard limit)"
    if sig == signal.SIGKILL:
        return "killed by SIGKILL (out of memory?)"
    if sig == signal.SIGXFSZ:
        return "file size limit exceeded (SIGXFSZ)"
    return f"killed by {_signal_name(sig)}"


def _outcome(
    end: dict[str, Any] | None, child: ChildRun, timeout_s: float, cpu_limit: int
) -> tuple[str, str, str | None]:
    """``(status, detail, exception)`` from the launcher's end record and how the process ended."""
    rc = child.returncode
    if child.timed_out:
        return "timeout", f"wall-clock limit of {timeout_s:g} s reached; process group killed", None
    if end is None and rc is not None and rc < 0:
        return "killed", _killed_detail(-rc, child.cpu_s, cpu_limit), None
    if end is None:
        return "error", f"the process ended (exit code {rc}) before the program finished", None
    if end.get("outcome") == "ok":
        if rc == 0:
            return "passed", "", None
        return "error", f"exit code {rc} after the program finished", None
    if end.get("outcome") == "exit":
        return "error", f"the program called sys.exit({end.get('code')}) before it finished", "SystemExit"
    exception = str(end.get("type") or "Exception")
    message = str(end.get("message") or "")
    status = "failed" if exception == "AssertionError" else "error"
    return status, (f"{exception}: {message}" if message else exception), exception


def run_program(
    source: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: float | None = None,
    memory_mb: int | None = 1024,
    max_processes: int = 16,
    max_output_bytes: int = 64 * 1024,
    max_file_mb: float = 16,
    disk_mb: int = 64,
    namespaces: bool = True,
    guard: bool = True,
    allow_site_packages: bool = False,
    python: str | None = None,
) -> ExecResult:
    """Run the Python program ``source`` in a sandboxed child process and report how it ended.

    ``timeout_s``: wall-clock limit. ``cpu_s``: CPU-time limit (default: ``timeout_s``, at least 1 s, rounded
    up). ``memory_mb``: address-space limit (``None``: none). ``max_processes``: ``RLIMIT_NPROC``.
    ``max_output_bytes``: how much of stdout and of stderr is kept. ``max_file_mb``: largest file the program
    may write (stdout/stderr included). ``disk_mb``: size of the tmpfs mounted on the working directory when a
    mount namespace is available.
    ``namespaces``/``guard``: switch the namespace protections / the Python guard off (for tests of the other
    layers). ``allow_site_packages``: let the program import the interpreter's site-packages (not only the
    standard library). ``python``: interpreter to use (default: ``sys.executable``).
    """
    _check_limits(source, timeout_s, cpu_s, memory_mb, max_output_bytes, max_file_mb, max_processes, disk_mb)
    python = python or sys.executable
    if not python:
        raise RuntimeError("no Python interpreter found (sys.executable is empty); pass python=")

    cpu_limit = max(1, math.ceil(cpu_s if cpu_s is not None else timeout_s))
    fsize = max(int(max_file_mb * _MIB), max_output_bytes + 1)

    with tempfile.TemporaryDirectory(prefix="prunelens-sandbox-", ignore_cleanup_errors=True) as tmp:
        root = os.path.realpath(tmp)
        work, program_path = _write_program(root, source)
        out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        report_r, report_w = os.pipe()
        cfg = {
            "report_fd": report_w,
            "sandbox": work,
            "program": program_path,
            "cpu_s": cpu_limit,
            "memory_bytes": None if memory_mb is None else int(memory_mb * _MIB),
            "fsize_bytes": fsize,
            "max_processes": int(max_processes),
            "disk_mb": int(disk_mb),
            "namespaces": bool(namespaces),
            "guard": bool(guard),
        }
        try:
            child = run_child(
                _launcher_command(python, allow_site_packages, cfg),
                cwd=work,
                env=_child_environment(work),
                report_w=report_w,
                stdout_path=out_path,
                stderr_path=err_path,
                timeout_s=timeout_s,
            )
            events = read_report(report_r)
        finally:
            os.close(report_r)
        stdout, out_trunc = read_head(out_path, max_output_bytes)
        stderr, err_trunc = read_head(err_path, max_output_bytes)

    protections, end = _launcher_records(events)
    status, detail, exception = _outcome(end, child, timeout_s, cpu_limit)
    return ExecResult(
        status=status,
        returncode=child.returncode,
        stdout=stdout,
        stderr=stderr,
        wall_s=child.wall_s,
        cpu_s=child.cpu_s,
        exception=exception,
        detail=detail,
        stdout_truncated=out_trunc,
        stderr_truncated=err_trunc,
        protections=protections,
        pid=child.pid,
        leftover_processes=len(child.leftover),
    )


def run_many(programs: Iterable[str], *, workers: int | None = None, **run_kwargs: Any) -> list[ExecResult]:
    """Run several programs concurrently (threads; each program still gets its own sandboxed process).

    Results are in the order of ``programs``. ``workers`` defaults to ``min(8, CPU count)``; note that each
    worker may use up to ``memory_mb``. Keyword arguments go to :func:`run_program`.
    """
    items = list(programs)
    if not items:
        return []
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, len(items))
    if workers == 1:
        return [run_program(p, **run_kwargs) for p in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prunelens-sandbox") as pool:
        return list(pool.map(lambda p: run_program(p, **run_kwargs), items))


@cache
def _probe(namespaces: bool, guard: bool) -> tuple[tuple[str, Any], ...]:
    result = run_program("pass\n", timeout_s=10.0, namespaces=namespaces, guard=guard)
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in result.protections.items())


def sandbox_protections(*, namespaces: bool = True, guard: bool = True) -> dict[str, Any]:
    """Which protections the sandbox gets on this machine (probed once by running an empty program).

    Keys: ``user_namespace``, ``network_namespace``, ``mount_namespace``, ``readonly_filesystem``,
    ``sandbox_tmpfs_mb``, ``rlimit_cpu_s``, ``rlimit_as_mb``, ``rlimit_fsize_mb``, ``rlimit_nproc``,
    ``nproc_enforced``, ``python_guard``, ``uid_map``, ``mounts_locked``, ``uid`` (the program's uid on the
    host) and ``notes`` (why something is missing).
    """
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _probe(namespaces, guard)}
