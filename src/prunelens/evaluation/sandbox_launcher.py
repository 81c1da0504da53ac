"""The sandbox launcher: runs inside the child process, before the untrusted program.

:func:`prunelens.evaluation.sandbox.run_program` starts ``python -I -B [-S] sandbox_launcher.py CONFIG_JSON``.
This file is run by path, never imported: it uses the standard library only, and only cheap imports (a
few milliseconds of start-up per program matter when thousands are run). It enters the namespaces, sets
the resource limits, installs the file-system guard, reports each step on a pipe, and then executes the
program.
"""

import json
import os
import resource
import sys

CFG: dict = {}  # the parent's settings (argv[1], JSON); set before main() runs
REPORT_FD = -1


def report(obj):
    try:
        os.write(REPORT_FD, (json.dumps(obj) + "\n").encode())
    except Exception:
        pass


def unescape_mount_path(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s) >= i + 4 and all(c in "01234567" for c in s[i + 1 : i + 4]):
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


NEWNS, NEWUSER, NEWNET = 0x00020000, 0x10000000, 0x40000000


def write_id_maps(uid, gid):
    for path, data in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", "%d %d 1" % (uid, uid)),
        ("/proc/self/gid_map", "%d %d 1" % (gid, gid)),
    ):
        with open(path, "w") as f:
            f.write(data)


def enter_namespaces(prot):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def mount(src, target, fstype, flags, data):
        def enc(s):
            return None if s is None else os.fsencode(s)

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

    def is_proc(mp):
        return mp == "/proc" or mp.startswith("/proc/")

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
        for name, bit in (
            ("nosuid", MS_NOSUID),
            ("nodev", MS_NODEV),
            ("noexec", MS_NOEXEC),
            ("nosymfollow", MS_NOSYMFOLLOW),
            ("noatime", MS_NOATIME),
            ("nodiratime", MS_NODIRATIME),
            ("relatime", MS_RELATIME),
        ):
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


def blocked(name, what=None):
    """A stand-in for ``name`` that refuses every call with ``PermissionError``."""
    import errno

    msg = "blocked by the prunelens sandbox: " + (what or name)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EPERM, msg)

    refuse.__name__ = name.rsplit(".", 1)[-1]
    return refuse


def patch(name, value):
    """Replace ``name`` in ``os`` and in ``posix`` (``os`` re-exports ``posix``'s functions)."""
    import posix

    for mod in (os, posix):
        if hasattr(mod, name):
            setattr(mod, name, value)


def path_checker(root):
    """``check(name, path, dir_fd=None, follow=True)``: raise ``PermissionError`` unless ``path`` resolves
    (``dir_fd`` and symlinks included) inside ``root`` or to ``/dev/null``. The functions it calls are
    bound here, before any of them is replaced by a guarded one."""
    import errno

    realpath, join, split, isabs = os.path.realpath, os.path.join, os.path.split, os.path.isabs
    getcwd, readlink, fsdecode, fspath = os.getcwd, os.readlink, os.fsdecode, os.fspath
    root = realpath(root)
    prefix = root.rstrip("/") + "/"
    allowed = frozenset(["/dev/null"])

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
            raise PermissionError(
                errno.EPERM,
                "blocked by the prunelens sandbox: %s outside the sandbox directory" % name,
                path if isinstance(path, (str, bytes)) else str(path),
            )

    return check


def guard_opens(check):
    """``open``/``io.open``/``_io.open`` in a write mode and ``os.open`` with a write flag, checked."""
    import _io
    import builtins
    import io

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    orig_io_open = io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            check("open(mode=%r)" % mode, file)
        return orig_io_open(file, mode, *args, **kwargs)

    guarded_open.__name__ = "open"
    builtins.open = io.open = _io.open = guarded_open

    orig_os_open = os.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            check("os.open", path, dir_fd)
        return orig_os_open(path, flags, mode, dir_fd=dir_fd)

    guarded_os_open.__name__ = "open"
    patch("open", guarded_os_open)


def guard_one_path(check, name, follow):
    """``os.<name>(path, ...)``, checked (``dir_fd`` and ``follow_symlinks`` honoured)."""
    fn = getattr(os, name, None)
    if fn is None:
        return

    def wrapper(path, *args, **kwargs):
        check("os." + name, path, kwargs.get("dir_fd"), follow and kwargs.get("follow_symlinks", True))
        return fn(path, *args, **kwargs)

    wrapper.__name__ = name
    patch(name, wrapper)


def guard_two_paths(check, name, check_src):
    """``os.<name>(src, dst, ...)``, with the destination (and, if ``check_src``, the source) checked."""
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


def guard_file_writes(root):
    """Every way of writing, creating, deleting, renaming or changing a file, refused outside ``root``."""
    check = path_checker(root)
    guard_opens(check)
    for name in "remove unlink rmdir mkdir mkfifo mknod removexattr".split():
        guard_one_path(check, name, follow=False)
    for name in "truncate chmod lchmod chown lchown utime setxattr chflags lchflags".split():
        guard_one_path(check, name, follow=True)
    guard_two_paths(check, "rename", True)
    guard_two_paths(check, "replace", True)
    guard_two_paths(check, "link", True)
    guard_two_paths(check, "symlink", False)


def block_processes_and_limits():
    """No new process (``os`` and ``subprocess``), no signal to another one, no change of the limits."""
    import posix

    for name in "fork forkpty system popen kill killpg execv execve posix_spawn posix_spawnp chroot".split():
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


def block_network():
    """No socket can be created and no name resolved."""
    import _socket
    import errno

    no_net = "network access"

    class socket(_socket.socket):
        __slots__ = ()

        def __init__(self, *args, **kwargs):
            raise PermissionError(errno.EPERM, "blocked by the prunelens sandbox: " + no_net + " (socket)")

    _socket.socket = _socket.SocketType = socket
    for name in "socketpair getaddrinfo gethostbyname gethostbyname_ex gethostbyaddr getnameinfo".split():
        if hasattr(_socket, name):
            setattr(_socket, name, blocked("socket." + name, no_net + " (socket." + name + ")"))


def install_guard(root):
    """The Python-level guard (see :mod:`prunelens.evaluation.sandbox`): destructive functions replaced by
    ones that raise ``PermissionError``, and ``ctypes`` made unimportable."""
    guard_file_writes(root)
    block_processes_and_limits()
    block_network()
    for name in ("ctypes", "_ctypes", "ctypes.util", "ctypes._endian"):
        sys.modules[name] = None


def main():
    host_uid = os.getuid()
    prot = {
        "user_namespace": False,
        "uid_map": False,
        "network_namespace": False,
        "mount_namespace": False,
        "readonly_filesystem": False,
        "sandbox_tmpfs_mb": None,
        "rlimit_cpu_s": None,
        "rlimit_as_mb": None,
        "rlimit_fsize_mb": None,
        "rlimit_nproc": None,
        "nproc_enforced": False,
        "python_guard": False,
        "mounts_locked": False,
        "uid": None,
        "notes": [],
    }
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


if __name__ == "__main__":
    CFG = json.loads(sys.argv[1])
    REPORT_FD = CFG["report_fd"]
    main()
