"""Serve the app on a free loopback port and drive it with a real Chromium (Playwright).

Used by the browser test (tests/app/test_browser.py) and the screenshot script
(``python -m tools.screenshots``); import it as ``tools.browser`` with the repository root on the path
(pytest puts it there, see pyproject.toml). Chromium comes from the system (``apt-get install chromium``;
``.ci/run`` installs it), never from ``playwright install``: set ``DYNEXIT_CHROMIUM`` to use another binary.
The server runs the app's entry script, app/streamlit_app.py, from the repository root, as ``make app`` does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dynexit.viz import chromium_path  # the one Chromium lookup (PNG export uses it too)

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "app" / "streamlit_app.py"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int) -> list[str]:
    """The ``streamlit run`` command line of ``make app``, on 127.0.0.1:``port``, without file watching."""
    return [sys.executable, "-m", "streamlit", "run", str(ENTRY), "--server.address", "127.0.0.1",
            "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false", "--client.toolbarMode", "minimal"]


@contextlib.contextmanager
def serve(env: dict | None = None, timeout: float = 120.0, log_path: str | os.PathLike | None = None):
    """Start ``streamlit run`` on a free 127.0.0.1 port; yields the URL; stops the server after.

    ``env`` adds environment variables (e.g. ``DYNEXIT_ZOO``). Raises RuntimeError with the
    server's output when it does not answer its health check within ``timeout`` seconds.
    """
    port = free_port()
    log = open(log_path, "w+b") if log_path else open(os.devnull, "w+b")
    proc = subprocess.Popen(server_command(port), cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode} before serving {url}"
                                   + (f"; see {log_path}" if log_path else ""))
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {timeout:.0f} s"
                                   + (f"; see {log_path}" if log_path else ""))
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def launch(playwright, executable: str | None = None):
    """A headless Chromium from the system (see the module docstring)."""
    executable = executable or chromium_path()
    if executable is None:
        raise RuntimeError("no Chromium found: apt-get install chromium (or set DYNEXIT_CHROMIUM)")
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


IDLE = "() => { const a = document.querySelector('[data-testid=\"stApp\"]'); " \
       "return a && a.dataset.testScriptState === 'notRunning' && a.dataset.testConnectionState === 'CONNECTED'; }"


def wait_idle(page, timeout_ms: int = 180_000, settle_ms: int = 1000):
    """Wait until the app has finished its run (idle for ``settle_ms``) and its images have loaded.

    Streamlit marks its root element with ``data-test-script-state`` (initial / running /
    notRunning); a fragment rerun or a page switch may start just after one run ends, hence the
    settling time.
    """
    page.wait_for_timeout(300)  # give a rerun triggered just before the time to start
    for _ in range(100):
        page.wait_for_function(IDLE, timeout=timeout_ms)
        page.wait_for_timeout(settle_ms)
        if page.evaluate(IDLE):
            break
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=timeout_ms)


def content_height(page) -> int:
    """Height of the app's content (the page itself does not scroll; the main block does)."""
    return int(page.evaluate("""() => Math.max(...Array.from(document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stMainBlockContainer"]'))
        .map(e => e.scrollHeight))"""))
