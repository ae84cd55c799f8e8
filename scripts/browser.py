"""What the screenshot scripts share: a local server started in its own process group and stopped with it, and
headless Chromium (Debian's ``chromium`` package) photographing one page.

``serve(cmd, health_url)`` is a context manager: it starts ``cmd`` on 127.0.0.1, waits until ``health_url``
answers 200 and, on leaving, stops the server and every process it started (mlflow ui and gunicorn fork workers).
``screenshot(url, out)`` runs ``chromium --headless --screenshot`` with a fresh profile and no network beyond the
page (no background networking, component updates, sync or first-run pages).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, timeout: float, what: str = "the server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer at {url} within {timeout:.0f} s")


@contextlib.contextmanager
def serve(cmd: list[str], health_url: str, timeout: float = 120, cwd: str | Path | None = None, what: str = "the server"):
    """Run ``cmd`` (a server) until the block ends; yields the process once ``health_url`` answers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
    try:
        wait_until_serving(health_url, proc, timeout, what)
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group that ``proc`` leads, SIGKILL it if still there after ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("error: Chromium not found; install it with 'apt-get install -y chromium'")


def screenshot(url: str, out: Path, size: str = "1600,1000", budget_ms: int = 15000, timeout: float = 180) -> Path:
    """Photograph ``url`` into the PNG ``out`` after ``budget_ms`` of the page's (virtual) time."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        cmd = [
            find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}", url,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot of {url}")
    return out
