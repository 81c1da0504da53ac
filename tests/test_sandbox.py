"""Tests of the code-execution sandbox (prunelens.evaluation.sandbox), hostile programs included."""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prunelens.evaluation.sandbox import (
    STATUSES,
    ExecResult,
    check_program,
    humaneval_program,
    mbpp_program,
    run_many,
    run_program,
    sandbox_protections,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox targets Linux")

FAST = {"timeout_s": 5.0}


def run(src: str, **kwargs) -> ExecResult:
    opts = dict(FAST)
    opts.update(kwargs)
    return run_program(textwrap.dedent(src), **opts)


def live_pids_in_group(pgid: int) -> list[int]:
    """Independent check: live (non-zombie) processes whose process group is ``pgid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


@pytest.fixture(scope="module")
def protections() -> dict:
    return sandbox_protections()


# ------------------------------------------------------------------------------------------------------------
# Ordinary outcomes
# ------------------------------------------------------------------------------------------------------------


def test_passing_program():
    r = run("print('hello')\nassert 1 + 1 == 2\n")
    assert r.status == "passed" and r.passed
    assert r.returncode == 0
    assert r.stdout == "hello\n"
    assert r.exception is None
    assert r.status in STATUSES
    assert r.wall_s < 5
    assert r.leftover_processes == 0


def test_failing_assertion():
    r = run("def f(x):\n    return x + 1\nassert f(1) == 3, 'wrong answer'\n")
    assert r.status == "failed" and not r.passed
    assert r.exception == "AssertionError"
    assert "wrong answer" in r.detail
    assert "AssertionError" in r.stderr and "program.py" in r.stderr
    assert "<string>" not in r.stderr  # the launcher's own frame is not shown


@pytest.mark.parametrize(
    ("src", "exception"),
    [
        ("def f(:\n    pass\n", "SyntaxError"),
        ("def f():\n  return 1\n   x = 2\n", "IndentationError"),
        ("1 / 0\n", "ZeroDivisionError"),
        ("undefined_name\n", "NameError"),
        ("input()\n", "EOFError"),  # stdin is empty: no hang waiting for input
    ],
)
def test_errors(src, exception):
    r = run(src)
    assert r.status == "error"
    assert r.exception == exception
    assert exception in r.stderr


def test_sys_exit_before_the_end_is_not_a_pass():
    r = run("import sys\nsys.exit(0)\nassert False\n")
    assert r.status == "error" and not r.passed
    assert r.exception == "SystemExit"
    r = run("import os\nos._exit(0)\n")
    assert r.status == "error" and not r.passed


def test_main_block_not_run():
    r = run("if __name__ == '__main__':\n    raise SystemExit(3)\nprint(__name__)\n")
    assert r.status == "passed"
    assert r.stdout.strip() == "__sandbox__"


def test_invalid_arguments():
    with pytest.raises(ValueError):
        run_program("pass", timeout_s=0)
    with pytest.raises(ValueError):
        run_program("pass", memory_mb=-1)
    with pytest.raises(TypeError):
        run_program(b"pass")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# Hostile programs
# ------------------------------------------------------------------------------------------------------------


def test_infinite_sleep_times_out_with_bounded_wall_time():
    t0 = time.monotonic()
    r = run("import time\nwhile True:\n    time.sleep(1)\n", timeout_s=1.0, cpu_s=10)
    elapsed = time.monotonic() - t0
    assert r.status == "timeout"
    assert 1.0 <= r.wall_s < 2.5
    assert elapsed < 3.0
    assert r.leftover_processes == 0
    assert live_pids_in_group(r.pid) == []


def test_busy_loop_times_out():
    r = run("while True:\n    pass\n", timeout_s=1.0, cpu_s=30)
    assert r.status == "timeout"
    assert r.wall_s < 2.5


def test_cpu_time_limit_kills_busy_loop():
    r = run("x = 0\nwhile True:\n    x += 1\n", timeout_s=8.0, cpu_s=1)
    assert r.status == "killed"
    assert "CPU" in r.detail
    assert r.wall_s < 4.0  # killed by the CPU limit, well before the wall-clock limit
    assert r.cpu_s is not None and r.cpu_s >= 0.9


@pytest.mark.parametrize(
    "src",
    [
        "x = bytearray(10**11)\n",  # 100 GB at once
        "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n",  # grows until the limit
        "s = 'x' * (3 * 1024**3)\n",  # 3 GiB: more than the limit, less than many machines have
    ],
)
def test_huge_allocation_is_contained(src):
    before = resource.getrlimit(resource.RLIMIT_AS)
    r = run(src, memory_mb=256, timeout_s=10.0)
    assert r.status in ("error", "killed")
    if r.status == "error":
        assert r.exception == "MemoryError"
    assert r.wall_s < 8
    # the parent is unaffected: its own limit is unchanged, and it can still allocate
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    assert len(bytearray(300 * 1024 * 1024)) == 300 * 1024 * 1024


@pytest.mark.parametrize(
    "src",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import os\nwhile True:\n    os.forkpty()\n",
        "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'pass'])\n",
        "import os\nos.system('echo owned > /tmp/prunelens-owned')\n",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()\n",
        "import os, signal\nos.kill(1, signal.SIGTERM)\n",
    ],
)
def test_fork_bomb_and_process_creation_blocked(src):
    r = run(src, timeout_s=3.0)
    assert r.status == "error"
    assert r.exception == "PermissionError"
    assert "blocked by the prunelens sandbox" in r.stderr
    assert r.wall_s < 2.5
    assert r.leftover_processes == 0
    assert live_pids_in_group(r.pid) == []


def test_guard_blocks_ctypes_and_raising_limits():
    r = run("import ctypes\n")
    assert r.status == "error" and r.exception == "ModuleNotFoundError"
    r = run("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\n")
    assert r.status == "error" and r.exception == "PermissionError"


def test_fork_bomb_contained_without_python_guard(protections):
    """With the Python guard off, the kernel limits still contain a fork loop: RLIMIT_NPROC stops it (not for
    root: the kernel exempts uid 0, then the timeout ends it), and the group kill leaves nothing behind."""
    src = """
        import os, time
        n = 0
        try:
            for _ in range(300):
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
        finally:
            print("forks", n, flush=True)
        time.sleep(60)
    """
    r = run(src, guard=False, timeout_s=3.0, max_processes=16)
    forks = int(r.stdout.split()[-1])
    if protections["nproc_enforced"]:
        assert r.status == "error" and r.exception == "BlockingIOError"
        assert forks < 16
    else:
        assert r.status == "timeout"
    assert r.wall_s < 4.0
    assert r.leftover_processes == 0
    assert live_pids_in_group(r.pid) == []


WRITE_ATTEMPTS = r"""
import os, pathlib, shutil, sys
target = pathlib.Path(sys.argv_target)
folder = target.parent
attempts = {
    "os.remove": lambda: os.remove(target),
    "os.unlink": lambda: os.unlink(str(target)),
    "pathlib.unlink": lambda: target.unlink(),
    "shutil.rmtree": lambda: shutil.rmtree(folder),
    "open(w)": lambda: open(target, "w").write("overwritten"),
    "open(a)": lambda: open(target, "a").write("appended"),
    "open(r+)": lambda: open(target, "r+").write("XX"),
    "write_text": lambda: target.write_text("overwritten"),
    "os.open(O_TRUNC)": lambda: os.open(target, os.O_WRONLY | os.O_TRUNC),
    "os.truncate": lambda: os.truncate(target, 0),
    "os.rename": lambda: os.rename(target, str(target) + ".moved"),
    "os.replace": lambda: os.replace(target, folder / "other"),
    "shutil.move": lambda: shutil.move(str(target), "stolen.txt"),
    "os.chmod": lambda: os.chmod(target, 0),
    "os.link": lambda: (os.link(target, "alias.txt"), open("alias.txt", "w").write("via hard link")),
    "symlink+write": lambda: (os.symlink(target, "link.txt"), open("link.txt", "w").write("via symlink")),
    "dir_fd unlink": lambda: os.unlink(target.name, dir_fd=os.open(folder, os.O_RDONLY)),
    "new file outside": lambda: open(folder / "new.txt", "w").write("x"),
    "os.mkdir outside": lambda: os.mkdir(folder / "newdir"),
}
for name, attempt in attempts.items():
    try:
        attempt()
    except OSError as e:
        print(name, "BLOCKED", e.errno)
    else:
        print(name, "DONE")
# inside its own directory, writing works
pathlib.Path("mine.txt").write_text("ok")
os.remove("mine.txt")
pathlib.Path("sub/deeper").mkdir(parents=True)
shutil.rmtree("sub")
print("inside OK")
"""


def _hostile_writer(target: Path) -> str:
    return WRITE_ATTEMPTS.replace("sys.argv_target", repr(str(target)))


def _assert_untouched(outside: Path, sentinel: Path, content: str, r: ExecResult) -> None:
    lines = [ln for ln in r.stdout.splitlines() if " BLOCKED" in ln or " DONE" in ln]
    assert len(lines) == 19, r.stdout + r.stderr
    assert not [ln for ln in lines if ln.endswith("DONE")], r.stdout
    assert "inside OK" in r.stdout, r.stderr
    assert sentinel.read_text() == content
    assert sorted(p.name for p in outside.iterdir()) == [sentinel.name]
    assert os.stat(sentinel).st_mode & 0o777 == 0o644


@pytest.mark.parametrize("namespaces", [True, False], ids=["all-layers", "python-guard-only"])
def test_file_deletion_outside_sandbox_blocked(tmp_path, namespaces):
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel.txt"
    sentinel.write_text("precious data\n")
    sentinel.chmod(0o644)
    r = run(_hostile_writer(sentinel), namespaces=namespaces)
    assert r.status == "passed", r.stderr
    _assert_untouched(outside, sentinel, "precious data\n", r)


def test_file_deletion_outside_sandbox_blocked_by_kernel(tmp_path, protections):
    """Without the Python guard, the read-only remount of everything but the sandbox still protects files."""
    if not protections["readonly_filesystem"]:
        pytest.skip(f"read-only filesystem protection not available here: {protections['notes']}")
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel.txt"
    sentinel.write_text("precious data\n")
    sentinel.chmod(0o644)
    r = run(_hostile_writer(sentinel), guard=False)
    assert r.status == "passed", r.stderr
    _assert_untouched(outside, sentinel, "precious data\n", r)


def test_sandbox_directory_is_throwaway():
    r = run(
        "import os, tempfile\nopen('f.txt', 'w').write('x')\ntempfile.mkstemp()\n"
        "print(os.getcwd(), os.environ['HOME'], tempfile.gettempdir())\n"
    )
    assert r.status == "passed", r.stderr
    cwd, home, tmp = r.stdout.split()
    assert cwd == home == tmp
    assert not os.path.exists(cwd)
    assert not os.path.exists(os.path.dirname(cwd))


def test_disk_filling_is_bounded(protections):
    r = run(
        "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 1024 * 1024)\n    i += 1\n",
        timeout_s=5.0,
        disk_mb=8,
        max_file_mb=2,
    )
    if protections["sandbox_tmpfs_mb"]:
        assert r.status == "error" and r.exception == "OSError"  # ENOSPC on the 8 MB tmpfs
        assert r.wall_s < 3
    else:
        assert r.status == "timeout"


@pytest.fixture
def listening_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.3)
    yield server
    server.close()


NETWORK_ATTEMPTS = """
import socket
attempts = {
    "create_connection": lambda: socket.create_connection(("127.0.0.1", PORT), timeout=1),
    "socket.connect": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", PORT)),
    "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", PORT)),
    "dns": lambda: socket.getaddrinfo("example.com", 80),
    "urllib": lambda: __import__("urllib.request").request.urlopen("http://127.0.0.1:%d/" % PORT, timeout=1),
}
for name, attempt in attempts.items():
    try:
        attempt()
    except Exception as e:
        print(name, "FAILED", type(e).__name__)
    else:
        print(name, "CONNECTED")
"""


def _assert_no_network(r: ExecResult, server: socket.socket) -> None:
    assert r.status == "passed", r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout
    assert all(" FAILED " in ln for ln in lines), r.stdout
    with pytest.raises(socket.timeout):
        server.accept()  # nothing reached the parent's server


@pytest.mark.parametrize("namespaces", [True, False], ids=["all-layers", "python-guard-only"])
def test_network_blocked(listening_server, namespaces):
    port = listening_server.getsockname()[1]
    r = run(NETWORK_ATTEMPTS.replace("PORT", str(port)), namespaces=namespaces)
    _assert_no_network(r, listening_server)
    assert "PermissionError" in r.stdout


def test_network_blocked_by_namespace_without_guard(listening_server, protections):
    if not protections["network_namespace"]:
        pytest.skip(f"network namespace not available here: {protections['notes']}")
    port = listening_server.getsockname()[1]
    r = run(NETWORK_ATTEMPTS.replace("PORT", str(port)), guard=False)
    _assert_no_network(r, listening_server)


def test_output_flood_is_truncated_without_hang():
    t0 = time.monotonic()
    r = run("while True:\n    print('x' * 1000)\n", timeout_s=5.0, max_output_bytes=10_000, max_file_mb=1)
    assert time.monotonic() - t0 < 4.0
    assert r.stdout_truncated
    assert len(r.stdout) == 10_000
    assert r.status in ("error", "timeout")
    r = run(
        "import sys\nwhile True:\n    sys.stderr.write('y' * 4096)\n",
        timeout_s=5.0,
        max_output_bytes=1000,
        max_file_mb=1,
    )
    assert r.stderr_truncated and len(r.stderr) == 1000


def test_parent_environment_not_visible(monkeypatch):
    monkeypatch.setenv("PRUNELENS_FAKE_SECRET", "hunter2-do-not-leak")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent/injected")
    r = run("import json, os, sys\nprint(json.dumps({'env': dict(os.environ), 'path': sys.path}))\n")
    assert r.status == "passed", r.stderr
    assert "hunter2" not in r.stdout
    info = json.loads(r.stdout)
    assert "PRUNELENS_FAKE_SECRET" not in info["env"]
    assert "/nonexistent/injected" not in info["path"]
    assert set(info["env"]) <= {"PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LC_ALL", "LC_CTYPE"}
    assert not any("site-packages" in p for p in info["path"])


def test_sandbox_protections_report(protections):
    for key in (
        "user_namespace",
        "network_namespace",
        "mount_namespace",
        "readonly_filesystem",
        "rlimit_cpu_s",
        "rlimit_as_mb",
        "rlimit_nproc",
        "nproc_enforced",
        "python_guard",
        "notes",
    ):
        assert key in protections
    assert protections["python_guard"] is True
    assert protections["rlimit_as_mb"] == 1024
    r = run("pass\n", guard=False, namespaces=False)
    assert r.protections["python_guard"] is False
    assert r.protections["network_namespace"] is False


# ------------------------------------------------------------------------------------------------------------
# Program assembly and real benchmark records
# ------------------------------------------------------------------------------------------------------------


def test_check_program_forms():
    prog = "def add(a, b):\n    return a + b\n"
    he_test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    assert check_program(prog, he_test, "add", **FAST).passed
    assert check_program(prog.replace("+", "-"), he_test, "add", **FAST).status == "failed"
    assert check_program(prog, "assert add(1, 1) == 2\nassert add(0, 5) == 5", None, **FAST).passed
    assert check_program(prog, "assert add(1, 1) == 3", **FAST).status == "failed"
    with pytest.raises(ValueError):
        check_program(prog, he_test, "add); import os; (", **FAST)


def test_assemblers_layout():
    assert humaneval_program("P", "C", "T", "f") == "PC\nT\ncheck(f)"
    assert mbpp_program("code", ["assert a", "assert b"]) == "code\nassert a\nassert b\n"
    assert mbpp_program("code", ["assert a"], "setup") == "code\nsetup\nassert a\n"


def _data_file(*relative: str) -> Path:
    """A shared data file, found like every loader finds it (fails in CI, skips elsewhere when missing)."""
    from conftest import need_data

    return need_data("/".join(relative))


def _records(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return {rec["task_id"]: rec for rec in map(json.loads, f)}


def test_humaneval_real_record():
    recs = _records(_data_file("humaneval", "HumanEval.jsonl"))
    rec = recs["HumanEval/0"]
    good = humaneval_program(rec["prompt"], rec["canonical_solution"], rec["test"], rec["entry_point"])
    assert good.startswith(rec["prompt"] + rec["canonical_solution"])
    assert good.endswith("check(has_close_elements)")
    wrong = humaneval_program(rec["prompt"], "    return False\n", rec["test"], rec["entry_point"])
    broken = humaneval_program(rec["prompt"], "    return (\n", rec["test"], rec["entry_point"])
    res = run_many([good, wrong, broken], workers=3, **FAST)
    assert [r.status for r in res] == ["passed", "failed", "error"], [r.stderr for r in res]
    assert res[2].exception == "SyntaxError"
    # the same through check_program (prompt + completion as the program, test + check(entry_point))
    r = check_program(rec["prompt"] + rec["canonical_solution"], rec["test"], rec["entry_point"], **FAST)
    assert r.passed, r.stderr


def test_mbpp_real_records():
    recs = _records(_data_file("mbpp", "mbpp.jsonl"))
    rec = recs[2]
    good = mbpp_program(rec["code"], rec["test_list"], rec["test_setup_code"])
    wrong = mbpp_program("def similar_elements(a, b):\n    return tuple(a)\n", rec["test_list"])
    # task 367's test_setup_code builds a tree from the solution's Node class: it must come after the code
    rec367 = recs[367]
    assert rec367["test_setup_code"].strip()
    good367 = mbpp_program(rec367["code"], rec367["test_list"], rec367["test_setup_code"])
    res = run_many([good, wrong, good367], workers=2, **FAST)
    assert [r.status for r in res] == ["passed", "failed", "passed"], [r.stderr for r in res]
    r = check_program(rec["code"], "\n".join(rec["test_list"]), None, **FAST)
    assert r.passed, r.stderr


# ------------------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------------------


def test_run_many_preserves_order_and_runs_in_parallel():
    sleep = "import time\ntime.sleep(30)"
    programs = ["print(1)", "assert False", sleep, "print(4)", sleep, sleep]
    t0 = time.monotonic()
    res = run_many(programs, workers=6, timeout_s=1.0)
    elapsed = time.monotonic() - t0
    assert [r.status for r in res] == ["passed", "failed", "timeout", "passed", "timeout", "timeout"]
    assert res[0].stdout == "1\n" and res[3].stdout == "4\n"
    assert elapsed < 2.8  # the three 1-second timeouts ran concurrently
    assert len({r.pid for r in res}) == len(programs)  # one process per program
    assert run_many([]) == []
    assert [r.status for r in run_many(["pass", "pass"], workers=1, **FAST)] == ["passed", "passed"]
