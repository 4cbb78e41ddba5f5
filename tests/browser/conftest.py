"""Fixtures of the end-to-end browser tests: a throwaway JupyterLab server and headless Chromium.

JupyterLab runs on 127.0.0.1 with a random token in a temporary folder, isolated from
the user's Jupyter config, settings and workspaces; it is shut down (kernels first,
then the server's process group) whatever happens. Chromium is Debian's package driven
by Playwright's Python client through ``executable_path`` (no browser download).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run"]
# JupyterLab user settings for the test: no news pop-up over the page, every cell kept in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _chromium() -> str | None:
    env = os.environ.get("NEGKIT_CHROMIUM")
    for path in ([env] if env else []) + list(CHROMIUM_CANDIDATES) + [shutil.which("chromium") or ""]:
        if path and os.access(path, os.X_OK):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A running JupyterLab: ``url(path)`` builds tokenised URLs, ``api(...)`` calls its REST API."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log_path: Path):
        self.root, self.port, self.token, self.proc, self.log_path = root, port, token, proc, log_path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = _chromium()
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); "
                    "the browser test drives it through Playwright with executable_path")
    pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install playwright)")
    return path


@pytest.fixture()
def lab_server(tmp_path: Path, chromium_path: str):
    """JupyterLab serving ``tmp_path/lab`` on a free port with a random token; always shut down."""
    root, home = tmp_path / "lab", tmp_path / "jupyter"
    root.mkdir()
    for rel, values in LAB_SETTINGS.items():
        f = home / "settings" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    port, token = _free_port(), secrets.token_hex(16)
    log_path = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ServerApp.open_browser=False",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    server = LabServer(root, port, token, proc, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {proc.returncode}:\n{server.log_tail()}")
            try:
                server.api("status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 60 s:\n{server.log_tail()}")
                time.sleep(0.3)
        yield server
    finally:
        _shutdown(server)


def _shutdown(server: LabServer) -> None:
    """Kernels first (they run in their own sessions), then the server's process group."""
    if server.proc.poll() is None:
        try:
            for kernel in server.api("kernels") or []:
                server.api(f"kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)


@pytest.fixture()
def browser_page(chromium_path: str):
    """A headless Chromium page (1400×1000); the browser is closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield page
        finally:
            browser.close()
