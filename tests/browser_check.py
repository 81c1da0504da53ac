"""Load an HTML page in headless Chromium and check it: no console errors, every image renders, a screenshot.

Usage (also imported by the tests)::

    python tests/browser_check.py runs/study/report/report.html shot.png

How it works: Chromium is started with ``--remote-debugging-pipe``, which speaks the Chrome DevTools
Protocol (CDP) as NUL-separated JSON over file descriptors 3 (commands in) and 4 (events out) — the
transport Puppeteer and Playwright use. No websocket, no port, no extra Python package. We open a tab,
enable the Page / Runtime / Log / Network domains, navigate to the file and wait for ``load``, then:

* console errors = ``Runtime.consoleAPICalled`` of type error/assert, ``Runtime.exceptionThrown`` and
  ``Log.entryAdded`` at level error (failed resource loads, CSP and security errors land there);
* requests = every URL the page asked for (``Network.requestWillBeSent``) other than the page itself and
  ``data:`` URIs — a self-contained page makes none;
* images = ``complete`` / ``naturalWidth`` / ``naturalHeight`` of every ``<img>`` after ``img.decode()``;
* a full-page PNG screenshot (``Page.captureScreenshot`` with ``captureBeyondViewport``) at 1280 px width.

:func:`find_chromium` locates the browser; :func:`ensure_chromium` installs Debian's ``chromium`` package
with apt-get when it is missing (the test set-up uses it).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """``$PRUNELENS_CHROMIUM``, else the first Chromium/Chrome found."""
    env = os.environ.get("PRUNELENS_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for c in CHROMIUM_CANDIDATES:
        p = c if c.startswith("/") and Path(c).exists() else shutil.which(c)
        if p:
            return p
    return None


def ensure_chromium(timeout: float = 1200) -> tuple[str | None, str]:
    """Return ``(path, "")`` or ``(None, why)``;
    installs Debian's ``chromium`` with apt-get if missing (root only)."""
    path = find_chromium()
    if path:
        return path, ""
    if os.environ.get("PRUNELENS_CHROMIUM"):
        return None, f"PRUNELENS_CHROMIUM={os.environ['PRUNELENS_CHROMIUM']} is not an executable browser"
    if not shutil.which("apt-get"):
        return None, "Chromium is not installed and apt-get is not available to install it"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "Chromium is not installed and installing it with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = "apt-get update -q && apt-get install -y -q chromium"
    try:
        r = subprocess.run(
            ["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"installing Chromium with apt-get took longer than {timeout:.0f} s"
    if r.returncode != 0:
        return None, f"`{cmd}` failed (exit {r.returncode}): {(r.stderr or r.stdout)[-800:]}"
    path = find_chromium()
    return (path, "") if path else (None, "apt-get installed chromium but no chromium binary was found")


@dataclass
class PageCheck:
    url: str
    title: str = ""
    console_errors: list[str] = field(default_factory=list)
    console_warnings: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # URLs other than the page itself and data: URIs
    images: list[dict[str, Any]] = field(default_factory=list)
    screenshot: Path | None = None
    page_height: int = 0
    seconds: float = 0.0

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [i for i in self.images if not i.get("complete") or not i.get("naturalWidth")]

    def problems(self) -> list[str]:
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"external request: {u}" for u in self.requests]
        out += [f"image not rendered: {i.get('src', '')[:80]}" for i in self.broken_images]
        if self.screenshot is None or not self.screenshot.exists() or self.screenshot.stat().st_size == 0:
            out.append("no screenshot")
        return out


class CDPError(RuntimeError):
    pass


class _Pipe:
    """CDP over ``--remote-debugging-pipe``: write JSON + NUL to fd 3 of Chromium,
    read JSON + NUL from its fd 4."""

    def __init__(self, chromium: str, user_data_dir: str, extra_flags: tuple[str, ...] = ()):
        r_in, self._w = os.pipe()
        self._r, w_out = os.pipe()
        # Chromium reads commands from fd 3 and writes answers to fd 4. The child's fds are mapped by a
        # tiny bash wrapper (no preexec_fn: not fork-safe with threads); the ends are first moved to
        # fds >= 10 so that the mapping can never overwrite one end with the other.
        hi_in, hi_out = fcntl.fcntl(r_in, fcntl.F_DUPFD, 10), fcntl.fcntl(w_out, fcntl.F_DUPFD, 10)
        for fd in (r_in, w_out):
            os.close(fd)
        args = [
            chromium,
            *CHROMIUM_FLAGS,
            *extra_flags,
            f"--user-data-dir={user_data_dir}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        remap = 'eval "exec 3<&$1 4>&$2 $1<&- $2>&-"; shift 2; exec "$@"'  # $1, $2: the two fd numbers
        wrapper = [shutil.which("bash") or "/bin/bash", "-c", remap, "browser_check"]
        # stderr goes to a file, not a pipe: nobody reads it while the page loads, and a full pipe would block
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 — lives as long as the browser
        self.proc = subprocess.Popen(
            [*wrapper, str(hi_in), str(hi_out), *args],
            pass_fds=(hi_in, hi_out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        os.close(hi_in)
        os.close(hi_out)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._w, json.dumps(msg).encode() + b"\0")
        except OSError as exc:  # the browser is gone (did not start, or crashed)
            time.sleep(0.2)
            raise CDPError(f"Chromium is not running ({exc}); its stderr: {self.stderr_tail()}") from exc
        return self._id

    def _recv(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise CDPError(f"Chromium closed the pipe: {self.stderr_tail()}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30
    ) -> dict:
        """Send a command and wait for its answer; events seen meanwhile are kept in ``events``."""
        i = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == i:
                if "error" in m:
                    raise CDPError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        for m in self.events:
            if m.get("method") == method:
                return m
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if "method" in m:
                self.events.append(m)
                if m["method"] == method:
                    return m

    def stderr_tail(self, n: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def close(self) -> str:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        finally:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and its helpers (own session)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
            for fd in (self._w, self._r):
                try:
                    os.close(fd)
                except OSError:
                    pass
        tail = self.stderr_tail()
        self._log.close()
        return tail


_IMAGES_JS = """(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return JSON.stringify({
    title: document.title,
    height: Math.ceil(document.documentElement.scrollHeight),
    images: imgs.map(i => ({src: (i.currentSrc || i.src).slice(0, 120), complete: i.complete,
                            naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))
  });
})()"""


def check_page(
    html_path: str | Path,
    screenshot: str | Path,
    *,
    chromium: str | None = None,
    width: int = 1280,
    height: int = 900,
    timeout: float = 60,
) -> PageCheck:
    """Open ``html_path`` in headless Chromium and return what it saw (see the module docstring)."""
    t0 = time.monotonic()
    chromium = chromium or find_chromium()
    if not chromium:
        raise FileNotFoundError("Chromium not found (install Debian's `chromium` or set PRUNELENS_CHROMIUM)")
    page = Path(html_path).resolve()
    url = page.as_uri()
    res = PageCheck(url=url)
    shot = Path(screenshot)
    with tempfile.TemporaryDirectory(prefix="prunelens-chromium-") as ud:
        cdp = _Pipe(chromium, ud)
        try:
            target = cdp.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            sid = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}, timeout=timeout)[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.call(f"{domain}.enable", session=sid, timeout=timeout)
            cdp.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=sid,
            )
            nav = cdp.call("Page.navigate", {"url": url}, session=sid, timeout=timeout)
            if nav.get("errorText"):
                res.console_errors.append(f"navigation failed: {nav['errorText']}")
            cdp.wait_event("Page.loadEventFired", timeout=timeout)
            ev = cdp.call(
                "Runtime.evaluate",
                {"expression": _IMAGES_JS, "awaitPromise": True, "returnByValue": True},
                session=sid,
                timeout=timeout,
            )
            if "exceptionDetails" in ev:
                raise CDPError(f"image probe failed: {ev['exceptionDetails']}")
            info = json.loads(ev["result"]["value"])
            res.title, res.page_height, res.images = info["title"], int(info["height"]), info["images"]
            data = cdp.call(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True},
                session=sid,
                timeout=timeout,
            )["data"]
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(data))
            res.screenshot = shot
            # let late events (console output from timers, failed loads) arrive
            cdp.call(
                "Runtime.evaluate",
                {"expression": "new Promise(r => setTimeout(r, 200))", "awaitPromise": True},
                session=sid,
                timeout=timeout,
            )
        finally:
            cdp.close()
    for m in cdp.events:
        method, p = m["method"], m.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            if p.get("type") in ("error", "assert"):
                res.console_errors.append(text)
            elif p.get("type") == "warning":
                res.console_warnings.append(text)
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            res.console_errors.append(str((d.get("exception") or {}).get("description") or d.get("text")))
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            msg = f"{e.get('text', '')} {e.get('url', '')}".strip()
            if e.get("level") == "error":
                res.console_errors.append(msg)
            elif e.get("level") == "warning":
                res.console_warnings.append(msg)
        elif method == "Network.requestWillBeSent":
            u = p.get("request", {}).get("url", "")
            if u != url and not u.startswith("data:") and u != "about:blank":
                res.requests.append(u)
    res.seconds = time.monotonic() - t0
    return res


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("How it works")[0].strip())
        return 2
    r = check_page(argv[0], argv[1])
    print(
        f"{r.url}: title {r.title!r}, {len(r.images)} images, page height {r.page_height} px, "
        f"screenshot {r.screenshot} ({r.screenshot.stat().st_size if r.screenshot else 0} bytes), "
        f"{r.seconds:.1f} s"
    )
    for p in r.problems():
        print("PROBLEM:", p)
    for w in r.console_warnings:
        print("warning:", w)
    return 1 if r.problems() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
