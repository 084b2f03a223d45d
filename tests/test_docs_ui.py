"""/docs: Swagger UI over the published 3.1 file, from local assets, usable to run a delete.

The browser test drives Debian's Chromium through Playwright (never a downloaded
browser). Without Chromium it skips with the reason, except under CI=true, where it fails.
Set UPDATE_DOCS_SCREENSHOT=1 to refresh docs/img/docs-page.png from the same run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from agentos_sessions.app import create_app
from agentos_sessions.contract import contract_path
from agentos_sessions.docs_ui import ASSET_TYPES, INIT_SCRIPT, PAGE
from storage import Database
from storage.seed import seed_sessions
from tests.support import KEY, AgnoData, ThreadedServer, assert_spec_error

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "docs-page.png"


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.mark.usefixtures("backend")
def test_page_and_every_asset_it_names_are_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Nothing on the page or in its script reaches beyond this server.
    assert not re.search(r"https?://|[\"']//", PAGE + INIT_SCRIPT)
    assert "validatorUrl: null" in INIT_SCRIPT
    referenced = re.findall(r'(?:href|src)="(docs/assets/[^"]+)"', page.text)
    assert {"docs/assets/swagger-ui-bundle.js", "docs/assets/init.js", "docs/assets/swagger-ui.css"} <= set(referenced)
    for asset in referenced:
        response = client.get(f"/{asset}")
        assert response.status_code == 200, asset
        expected = ASSET_TYPES.get(asset.rsplit("/", 1)[1], "text/javascript")
        assert response.headers["content-type"].split(";")[0] == expected


@pytest.mark.usefixtures("backend")
def test_the_page_loads_the_published_file_verbatim(client):
    page = client.get("/docs")
    assert 'data-spec-url="openapi.yaml"' in page.text
    assert client.get("/openapi.yaml").content == contract_path().read_bytes()


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("name", ["app.py", "..%2Fapp.py", "swagger-ui.js.map", "LICENSE"])
def test_only_listed_assets_are_served(client, name):
    assert_spec_error(client.get(f"/docs/assets/{name}"), 404, "NOT_FOUND")


@pytest.mark.usefixtures("backend")
def test_docs_need_no_credentials_and_the_delete_still_does(client):
    assert client.get("/docs").status_code == 200
    assert_spec_error(client.delete("/sessions/anything"), 401, "UNAUTHENTICATED")


def _browser_or_skip():
    """Playwright's sync API, or a skip with the reason; under CI=true a failure instead."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "Playwright is not installed (pip install -e '.[test]')"
    if problem is None and not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {problem}")
        pytest.skip(problem)
    return sync_playwright


def test_missing_browser_skips_locally_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        _browser_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _browser_or_skip()


@pytest.mark.live
def test_reviewer_authorizes_and_deletes_from_the_page(make_settings, tmp_path):
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    settings = make_settings()
    seeder = Database(settings.databases[0])
    (session_id,) = seed_sessions(seeder, settings.databases[0].default_session_table, count=1)
    app = create_app(settings)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()

    with ThreadedServer(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            outside = []
            page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
            page.goto(f"{url}/docs")
            expect(page.get_by_text("OAS 3.1")).to_be_visible()

            page.get_by_role("button", name="Authorize").first.click()
            page.fill("#auth-bearer-value", KEY)
            page.get_by_role("button", name="Apply credentials").click()
            page.get_by_role("button", name="Close").click()

            operation = page.locator("#operations-Sessions-delete_session")
            operation.locator(".opblock-summary").click()
            operation.get_by_role("button", name="Try it out").click()
            operation.locator("input[placeholder='session_id']").fill(session_id)
            status = operation.locator(".live-responses-table tr.response .response-col_status").first

            operation.get_by_role("button", name="Execute").click()
            expect(status).to_have_text("204")
            page.screenshot(path=artifacts / "docs-page.png")

            operation.get_by_role("button", name="Execute").click()
            expect(status).to_have_text("404")
            expect(operation.locator(".live-responses-table tr.response")).to_contain_text('"error_code": "NOT_FOUND"')
            page.screenshot(path=artifacts / "docs-page-404.png", full_page=True)
        finally:
            browser.close()

    assert outside == [], f"the page reached outside this server: {outside}"
    # The page's delete really erased the session.
    assert AgnoData(seeder, settings.databases[0].default_session_table).counts(session_id)["sessions"] == 0
    seeder.dispose()
    print(f"screenshots: {artifacts}")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifacts / "docs-page.png", README_SCREENSHOT)
