"""A real server for tests: ``agentos-sessions serve`` on a free loopback port.

Started as a subprocess, polled until it answers, and always terminated.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from tests.support import KEY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_toml(settings) -> str:
    """One [[databases]] entry for a DatabaseSettings, in the config file's syntax."""
    lines = ["[[databases]]", f'id = "{settings.id}"', f'url = "{settings.url}"']
    names = ", ".join(f'{{ name = "{t.name}", runs_table = "{t.runs_table}" }}' for t in settings.session_tables)
    lines.append(f"session_tables = [{names}]")
    if settings.schema:
        lines.append(f'schema = "{settings.schema}"')
    return "\n".join(lines) + "\n"


class LiveServer:
    def __init__(self, workdir: Path, config_text: str, *, workers: int = 1, extra_env: dict | None = None):
        self.workdir = workdir
        self.config = workdir / "agentos-sessions.toml"
        self.config.write_text(config_text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {**os.environ, "OS_SECURITY_KEY": KEY, **(extra_env or {})}
        self.log = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agentos_sessions.cli", "--config", str(self.config), *args]

    def start(self, timeout: float = 30) -> "LiveServer":
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command("serve", "--port", str(self.port), "--workers", str(self.workers), "--no-access-log"),
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL the server and its workers at once: no shutdown, no cleanup, as a crash."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def seed(self, count: int, runs: int = 2) -> list[str]:
        done = subprocess.run(
            self.command("seed", "--count", str(count), "--runs", str(runs)),
            cwd=self.workdir, env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.split()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ThreadedServer:
    """An ASGI app under uvicorn in this process, on a free loopback port."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
