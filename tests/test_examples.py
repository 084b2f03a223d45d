"""examples/host_agentos.py: AgentOS's full document, hosted from a fresh checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.support import EXAMPLE, agentos_openapi, free_port, wait_until

DOCUMENT = EXAMPLE.with_name("agentos-3.1.10-openapi.json")


def test_the_committed_document_is_what_the_installed_agno_generates(tmp_path):
    assert json.loads(DOCUMENT.read_text()) == agentos_openapi(tmp_path)


def test_the_example_serves_the_document_its_docs_and_stubs_behind_validation(tmp_path):
    port = free_port()
    env = {**os.environ, "OS_SECURITY_KEY": "example-key"}
    with (tmp_path / "log").open("wb") as log:
        server = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", str(port)], cwd=tmp_path, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/openapi.json").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(lambda: answers() or server.poll() is not None, timeout=60, what="the example to answer")
        assert server.poll() is None, (tmp_path / "log").read_text()
        assert httpx.get(f"{base}/openapi.json").json() == json.loads(DOCUMENT.read_text())
        assert "swagger-ui" in httpx.get(f"{base}/docs").text
        key = {"Authorization": "Bearer example-key"}
        assert httpx.get(f"{base}/sessions?type=agent", headers=key).status_code == 501
        assert httpx.get(f"{base}/sessions?type=robot", headers=key).status_code == 422
        assert httpx.get(f"{base}/sessions?type=agent").status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
