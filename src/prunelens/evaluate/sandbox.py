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
import select
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

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


# ------------------------------------------------------------------------------------------------------------
# The launcher: runs inside the child, before the program. Standard library only, and only cheap imports
# (it is passed with -c; a few ms of start-up per program matter when thousands are run).
# ------------------------------------------------------------------------------------------------------------

_LAUNCHER = r'''
import os, sys, json, resource

CFG = json.loads(sys.argv[1])
REPORT_FD = CFG["report_fd"]


def report(obj):
    try:
        os.write(REPORT_FD, (json.dumps(obj) + "\n").encode())
    except Exception:
        pass


def unescape_mount_path(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s) >= i + 4 and all(c in "01234567" for c in s[i + 1:i + 4]):
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


NEWNS, NEWUSER, NEWNET = 0x00020000, 0x10000000, 0x40000000


def write_id_maps(uid, gid):
    for path, data in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", "%d %d 1" % (uid, uid)),
                       ("/proc/self/gid_map", "%d %d 1" % (gid, gid))):
        with open(path, "w") as f:
            f.write(data)


def enter_namespaces(prot):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def mount(src, target, fstype, flags, data):
        enc = lambda s: None if s is None else os.fsencode(s)
        if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), target)

    uid, gid = os.getuid(), os.getgid()
    chosen = 0
    for flags in (NEWUSER | NEWNS | NEWNET, NEWUSER | NEWNET, NEWNS | NEWNET, NEWNET):
        if libc.unshare(flags) == 0:
            chosen = flags
            break
    if not chosen:
        prot["notes"].append("unshare failed: " + os.strerror(ctypes.get_errno()))
        return
    prot["network_namespace"] = True
    prot["user_namespace"] = bool(chosen & NEWUSER)
    if chosen & NEWUSER:
        try:
            write_id_maps(uid, gid)
            prot["uid_map"] = True
        except OSError as e:
            prot["notes"].append("uid/gid map not written: %s" % e)
    if not chosen & NEWNS:
        return
    sandbox = CFG["sandbox"]
    try:
        # Private propagation first: nothing done below may reach the host's mount table.
        mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        mount(sandbox, sandbox, None, MS_BIND | MS_REC, None)
    except OSError as e:
        prot["notes"].append("mount namespace unusable: %s" % e)
        return
    prot["mount_namespace"] = True
    is_proc = lambda mp: mp == "/proc" or mp.startswith("/proc/")
    failed = remount_readonly(mount, lambda mp: not is_proc(mp))
    prot["readonly_filesystem"] = "/" not in failed
    disk_mb = CFG["disk_mb"]
    if disk_mb and (prot["uid_map"] or not prot["user_namespace"]):
        try:
            mount("tmpfs", sandbox, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=700" % disk_mb)
            prot["sandbox_tmpfs_mb"] = disk_mb
        except OSError as e:
            prot["notes"].append("no tmpfs on the sandbox directory: %s" % e)
    if prot["readonly_filesystem"]:
        # Lock the read-only flags: mounts copied into a mount namespace owned by a less privileged user
        # namespace cannot be made writable again (nor the tmpfs unmounted), even by code reaching mount(2).
        # /proc is still writable here (the id maps are written there); it is made read-only just after.
        if libc.unshare(NEWUSER | NEWNS) == 0:
            try:
                write_id_maps(uid, gid)
                prot["mounts_locked"] = True
            except OSError as e:
                prot["notes"].append("inner uid/gid map not written: %s" % e)
        else:
            prot["notes"].append("read-only mounts not locked: " + os.strerror(ctypes.get_errno()))
    failed += remount_readonly(mount, is_proc)
    if failed:
        prot["notes"].append("not remounted read-only: " + ", ".join(failed[:8]))


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOSYMFOLLOW = 1, 2, 4, 8, 256
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24


def remount_readonly(mount, select):
    """Remount read-only each mount point (but the sandbox) for which ``select(path)``; return failures."""
    sandbox = CFG["sandbox"]
    failed, seen = [], set()
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        mp = unescape_mount_path(fields[4])
        if mp in seen or mp == sandbox or mp.startswith(sandbox + "/") or not select(mp):
            continue
        seen.add(mp)
        opts = fields[5].split(",")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC),
                          ("nosymfollow", MS_NOSYMFOLLOW), ("noatime", MS_NOATIME),
                          ("nodiratime", MS_NODIRATIME), ("relatime", MS_RELATIME)):
            if name in opts:
                flags |= bit
        if "noatime" not in opts and "relatime" not in opts:
            flags |= MS_STRICTATIME
        try:
            mount(None, mp, None, flags, None)
        except OSError:
            failed.append(mp)
    return failed


def count_user_tasks(uid):
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            if os.stat("/proc/" + name).st_uid != uid:
                continue
            total += max(1, os.stat("/proc/" + name + "/task").st_nlink - 2)
        except OSError:
            pass
    return total


def set_limits(prot, host_uid):
    def setlim(name, soft, hard=None):
        res = getattr(resource, name, None)
        if res is None:
            return None
        hard = soft if hard is None else hard
        try:
            cur_soft, cur_hard = resource.getrlimit(res)
            if cur_hard != resource.RLIM_INFINITY:
                hard = min(hard, cur_hard)
                soft = min(soft, hard)
            resource.setrlimit(res, (soft, hard))
            return soft
        except (ValueError, OSError) as e:
            prot["notes"].append("%s not set: %s" % (name, e))
            return None

    setlim("RLIMIT_CORE", 0)
    prot["rlimit_cpu_s"] = setlim("RLIMIT_CPU", CFG["cpu_s"], CFG["cpu_s"] + 1)
    if CFG["memory_bytes"]:
        got = setlim("RLIMIT_AS", CFG["memory_bytes"])
        prot["rlimit_as_mb"] = None if got is None else got // (1024 * 1024)
    got = setlim("RLIMIT_FSIZE", CFG["fsize_bytes"])
    prot["rlimit_fsize_mb"] = None if got is None else round(got / (1024 * 1024), 3)
    n = CFG["max_processes"]
    if n:
        try:
            kernel = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
        except ValueError:
            kernel = (0, 0)
        if prot["user_namespace"] and kernel >= (5, 14):
            limit = n  # RLIMIT_NPROC is counted per user namespace since Linux 5.14
        elif host_uid == 0:
            limit = n  # not enforced for uid 0; set anyway
        else:
            limit = count_user_tasks(host_uid) + n  # counted over all the user's processes
        prot["rlimit_nproc"] = setlim("RLIMIT_NPROC", limit)
        # the kernel exempts uid 0 (even inside a user namespace) and holders of CAP_SYS_RESOURCE/ADMIN
        prot["nproc_enforced"] = prot["rlimit_nproc"] is not None and host_uid != 0


def install_guard(root):
    import builtins, errno, io, _io, posix, _socket
    realpath, join, split, isabs = os.path.realpath, os.path.join, os.path.split, os.path.isabs
    getcwd, readlink, fsdecode, fspath = os.getcwd, os.readlink, os.fsdecode, os.fspath
    root = realpath(root)
    prefix = root.rstrip("/") + "/"
    allowed = frozenset(["/dev/null"])
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def blocked(name, what=None):
        msg = "blocked by the prunelens sandbox: " + (what or name)

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EPERM, msg)
        refuse.__name__ = name.rsplit(".", 1)[-1]
        return refuse

    def resolve(path, dir_fd, follow):
        p = fsdecode(fspath(path))
        if dir_fd is not None and not isabs(p):
            base = readlink("/proc/self/fd/%d" % dir_fd)
        else:
            base = getcwd()
        full = join(base, p)
        if not follow:
            head, tail = split(full.rstrip("/") or "/")
            if tail not in ("", ".", ".."):
                return join(realpath(head), tail)
        return realpath(full)

    def check(name, path, dir_fd=None, follow=True):
        if isinstance(path, int):
            return  # an open descriptor: it was opened through the guard (or is a standard stream)
        try:
            full = resolve(path, dir_fd, follow)
            ok = full == root or full.startswith(prefix) or full in allowed
        except (OSError, TypeError, ValueError):
            ok = False
        if not ok:
            raise PermissionError(errno.EPERM, "blocked by the prunelens sandbox: %s outside the sandbox "
                                  "directory" % name, path if isinstance(path, (str, bytes)) else str(path))

    def patch(name, value):
        for mod in (os, posix):
            if hasattr(mod, name):
                setattr(mod, name, value)

    orig_io_open = io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            check("open(mode=%r)" % mode, file)
        return orig_io_open(file, mode, *args, **kwargs)
    guarded_open.__name__ = "open"
    builtins.open = io.open = _io.open = guarded_open

    orig_os_open = os.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & WRITE_FLAGS:
            check("os.open", path, dir_fd)
        return orig_os_open(path, flags, mode, dir_fd=dir_fd)
    guarded_os_open.__name__ = "open"
    patch("open", guarded_os_open)

    def one_path(name, follow):
        fn = getattr(os, name, None)
        if fn is None:
            return

        def wrapper(path, *args, **kwargs):
            check("os." + name, path, kwargs.get("dir_fd"), follow and kwargs.get("follow_symlinks", True))
            return fn(path, *args, **kwargs)
        wrapper.__name__ = name
        patch(name, wrapper)

    for name in ("remove", "unlink", "rmdir", "mkdir", "mkfifo", "mknod", "removexattr"):
        one_path(name, follow=False)
    for name in ("truncate", "chmod", "lchmod", "chown", "lchown", "utime", "setxattr", "chflags",
                 "lchflags"):
        one_path(name, follow=True)

    def two_paths(name, check_src):
        fn = getattr(os, name, None)
        if fn is None:
            return

        def wrapper(src, dst, *args, **kwargs):
            if check_src:
                check("os." + name, src, kwargs.get("src_dir_fd"), False)
            check("os." + name, dst, kwargs.get("dst_dir_fd", kwargs.get("dir_fd")), False)
            return fn(src, dst, *args, **kwargs)
        wrapper.__name__ = name
        patch(name, wrapper)

    two_paths("rename", True)
    two_paths("replace", True)
    two_paths("link", True)
    two_paths("symlink", False)

    for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "execv", "execve",
                 "posix_spawn", "posix_spawnp", "chroot"):
        if hasattr(os, name) or hasattr(posix, name):
            patch(name, blocked("os." + name))
    fork_exec = blocked("subprocess", "starting a process (subprocess)")
    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = fork_exec  # read by subprocess when it is imported
    except ImportError:
        pass
    sub = sys.modules.get("subprocess")
    if sub is not None:
        sub._fork_exec = fork_exec
        sub._USE_POSIX_SPAWN = False
    try:
        import signal as _signal
        if hasattr(_signal, "pidfd_send_signal"):
            _signal.pidfd_send_signal = blocked("signal.pidfd_send_signal")
    except ImportError:
        pass
    resource.setrlimit = blocked("resource.setrlimit")
    if hasattr(resource, "prlimit"):
        resource.prlimit = blocked("resource.prlimit")

    no_net = "network access"
    base_socket = _socket.socket

    class socket(base_socket):
        __slots__ = ()

        def __init__(self, *args, **kwargs):
            raise PermissionError(errno.EPERM, "blocked by the prunelens sandbox: " + no_net + " (socket)")
    _socket.socket = _socket.SocketType = socket
    for name in ("socketpair", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr",
                 "getnameinfo"):
        if hasattr(_socket, name):
            setattr(_socket, name, blocked("socket." + name, no_net + " (socket." + name + ")"))

    for name in ("ctypes", "_ctypes", "ctypes.util", "ctypes._endian"):
        sys.modules[name] = None


def main():
    host_uid = os.getuid()
    prot = {"user_namespace": False, "uid_map": False, "network_namespace": False, "mount_namespace": False,
            "readonly_filesystem": False, "sandbox_tmpfs_mb": None, "rlimit_cpu_s": None,
            "rlimit_as_mb": None, "rlimit_fsize_mb": None, "rlimit_nproc": None, "nproc_enforced": False,
            "python_guard": False,
            "mounts_locked": False, "uid": None, "notes": []}
    if CFG["namespaces"] and sys.platform.startswith("linux"):
        try:
            enter_namespaces(prot)
        except Exception as e:
            prot["notes"].append("namespace setup failed: %r" % (e,))
    prot["uid"] = host_uid
    os.chdir(CFG["sandbox"])  # again: a tmpfs may now be mounted over it
    set_limits(prot, host_uid)
    path = CFG["program"]
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except BaseException as e:  # SyntaxError, or resources exhausted while compiling
        import traceback
        traceback.print_exception(type(e), e, None)
        report({"event": "start", "protections": prot})
        report({"event": "end", "outcome": "exception", "type": type(e).__name__, "message": str(e)[:1000]})
        sys.stderr.flush()
        os._exit(1)
    if CFG["guard"]:
        install_guard(CFG["sandbox"])
        prot["python_guard"] = True
    report({"event": "start", "protections": prot})
    sys.argv = [path]
    namespace = {"__name__": "__sandbox__", "__file__": path, "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except SystemExit as e:
        exit_code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        end = {"event": "end", "outcome": "exit", "code": exit_code}
    except BaseException as e:
        exit_code = 1
        try:
            import traceback
            tb = e.__traceback__
            traceback.print_exception(type(e), e, tb.tb_next if tb is not None else None)
        except BaseException:
            pass
        try:
            message = str(e)[:1000]
        except BaseException:
            message = "<unprintable>"
        end = {"event": "end", "outcome": "exception", "type": type(e).__name__, "message": message}
    else:
        exit_code = 0
        end = {"event": "end", "outcome": "ok"}
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    report(end)
    os._exit(exit_code & 0xFF)


main()
'''


# ------------------------------------------------------------------------------------------------------------
# Parent side
# ------------------------------------------------------------------------------------------------------------


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
    found = []
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
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def _read_head(path: str, limit: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return "", False
    truncated = len(data) > limit
    return data[:limit].decode("utf-8", errors="replace"), truncated


def _read_report(fd: int) -> list[dict[str, Any]]:
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


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


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
    python = python or sys.executable
    if not python:
        raise RuntimeError("no Python interpreter found (sys.executable is empty); pass python=")

    cpu_limit = max(1, math.ceil(cpu_s if cpu_s is not None else timeout_s))
    fsize = max(int(max_file_mb * _MIB), max_output_bytes + 1)

    with tempfile.TemporaryDirectory(prefix="prunelens-sandbox-", ignore_cleanup_errors=True) as tmp:
        root = os.path.realpath(tmp)
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        program_path = os.path.join(root, "program.py")
        with open(program_path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(source)
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
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": work,
            "TMPDIR": work,
            "TMP": work,
            "TEMP": work,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        cmd = [python, "-I", "-B", "-X", "utf8"]
        if not allow_site_packages:
            cmd.append("-S")
        cmd += ["-c", _LAUNCHER, json.dumps(cfg)]

        proc = None
        timed_out = False
        wall = 0.0
        status_word = None
        rusage = None
        leftover: list[int] = []
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                t0 = time.monotonic()
                try:
                    proc = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                        start_new_session=True, pass_fds=(report_w,), close_fds=True,
                    )
                finally:
                    os.close(report_w)
                try:
                    if hasattr(os, "waitid"):
                        timed_out = not _wait_exit(proc.pid, timeout_s)
                    else:  # not Linux: no way to wait without reaping
                        try:
                            proc.wait(timeout_s)
                        except subprocess.TimeoutExpired:
                            timed_out = True
                    wall = time.monotonic() - t0
                finally:
                    if not wall:
                        wall = time.monotonic() - t0
                    # Kill the whole group (on timeout, and any straggler otherwise), and make sure no member
                    # is left, all before reaping the leader: its zombie keeps the group id from being reused.
                    _killpg(proc.pid)
                    if proc.returncode is None and not hasattr(os, "waitid"):
                        proc.wait()
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
            events = _read_report(report_r)
        finally:
            os.close(report_r)
        stdout, out_trunc = _read_head(out_path, max_output_bytes)
        stderr, err_trunc = _read_head(err_path, max_output_bytes)

    start = next((e for e in events if e.get("event") == "start"), {})
    end = next((e for e in events if e.get("event") == "end"), None)
    protections = start.get("protections", {}) if isinstance(start.get("protections"), dict) else {}
    rc = proc.returncode
    cpu_used = None if rusage is None else rusage.ru_utime + rusage.ru_stime
    exception = None
    if timed_out:
        status, detail = "timeout", f"wall-clock limit of {timeout_s:g} s reached; process group killed"
    elif end is None and rc is not None and rc < 0:
        sig = -rc
        status = "killed"
        if sig == signal.SIGXCPU:
            detail = f"CPU-time limit of {cpu_limit} s exceeded (SIGXCPU)"
        elif sig == signal.SIGKILL and cpu_used is not None and cpu_used >= cpu_limit:
            detail = f"CPU-time limit of {cpu_limit} s exceeded (SIGKILL at the hard limit)"
        elif sig == signal.SIGKILL:
            detail = "killed by SIGKILL (out of memory?)"
        elif sig == signal.SIGXFSZ:
            detail = "file size limit exceeded (SIGXFSZ)"
        else:
            detail = f"killed by {_signal_name(sig)}"
    elif end is None:
        status, detail = "error", f"the process ended (exit code {rc}) before the program finished"
    elif end.get("outcome") == "ok":
        if rc == 0:
            status, detail = "passed", ""
        else:
            status, detail = "error", f"exit code {rc} after the program finished"
    elif end.get("outcome") == "exit":
        status, detail = "error", f"the program called sys.exit({end.get('code')}) before it finished"
        exception = "SystemExit"
    else:
        exception = str(end.get("type") or "Exception")
        message = str(end.get("message") or "")
        status = "failed" if exception == "AssertionError" else "error"
        detail = f"{exception}: {message}" if message else exception

    return ExecResult(
        status=status,
        returncode=rc,
        stdout=stdout,
        stderr=stderr,
        wall_s=wall,
        cpu_s=cpu_used,
        exception=exception,
        detail=detail,
        stdout_truncated=out_trunc,
        stderr_truncated=err_trunc,
        protections=protections,
        pid=proc.pid,
        leftover_processes=len(leftover),
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


@lru_cache(maxsize=None)
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
