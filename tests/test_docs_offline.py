"""/docs and /redoc work without internet access: a real headless Chromium (Debian's
package) loads each page from a live server, runs its JavaScript, and must render every
operation of the spec while no request of the page leaves the server's origin.

`python -m tests.test_docs_offline docs/swagger-ui.png` remakes the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_server, stop_server

KEY = "docs-test-key"
# Every host but the server's resolves to nothing: a page that needs a CDN renders blank.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def chromium() -> str:
    """Debian's chromium; a skip on a laptop without it, a failure in CI (CI=true)."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs it as root (apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def browse(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run on `url`, after its scripts had 10 s of virtual time."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # CI runs as root
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--disable-background-networking",
            OFFLINE,
            "--virtual-time-budget=10000",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Operations(HTMLParser):
    """(method, path) of each operation a rendered page shows: Swagger UI writes them as
    `.opblock-summary-method` and `.opblock-summary-path[data-path]`, ReDoc as
    `.http-verb` followed by a span with the path."""

    def __init__(self, method_class: str) -> None:
        super().__init__()
        self.method_class = method_class
        self.found: set[tuple[str, str]] = set()
        self.method: str | None = None
        self.in_method = False
        self.want_path = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        self.in_method = self.method_class in classes
        if self.method and "opblock-summary-path" in classes and attributes.get("data-path"):
            self.found.add((self.method, str(attributes["data-path"])))
            self.method = None
        self.want_path = self.method is not None and tag == "span" and not self.in_method

    def handle_data(self, data: str) -> None:
        if self.in_method and data.strip():
            self.method = data.strip().lower()
            self.in_method = False
        elif self.want_path and data.startswith("/") and self.method:
            self.found.add((self.method, data.strip()))
            self.method = None
            self.want_path = False


def page_requests(netlog: Path, origin: str) -> Iterator[str]:
    """URLs that the page itself requested (its initiator is its origin), from Chromium's
    net log; the browser's own background requests have no initiator."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start and params.get("initiator") == origin:
            yield params["url"]


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    """A server with an API key: the docs, their assets and the spec stay open."""
    proc, url = start_server(env={"SCE_API_KEY": KEY})
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.mark.parametrize(
    ("page", "method_class", "assets"),
    [
        ("/docs", "opblock-summary-method", {"swagger-ui-bundle.js", "swagger-ui.css"}),
        ("/redoc", "http-verb", {"redoc.standalone.js"}),
    ],
)
def test_docs_page_renders_every_operation_offline(
    keyed_server: str, tmp_path: Path, page: str, method_class: str, assets: set[str]
) -> None:
    spec = httpx.get(f"{keyed_server}/openapi.json").json()
    expected = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    netlog = tmp_path / "netlog.json"
    result = browse(
        f"{keyed_server}{page}", tmp_path / "profile", f"--log-net-log={netlog}", "--dump-dom"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    operations = Operations(method_class)
    operations.feed(result.stdout)
    assert operations.found == expected, f"{page} rendered {sorted(operations.found)}"

    requested = list(page_requests(netlog, keyed_server))
    assert {url.rsplit("/", 1)[-1] for url in requested} >= {*assets, "openapi.json"}
    outside = [url for url in requested if not url.startswith(f"{keyed_server}/")]
    assert not outside, f"{page} requested other hosts: {outside}"


def test_docs_assets_need_no_key_and_the_apis_still_do(keyed_server: str) -> None:
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js", "/openapi.json"):
        assert httpx.get(f"{keyed_server}{path}").status_code == 200, path
    assert httpx.get(f"{keyed_server}/v2").status_code == 401


def screenshot(target: Path) -> None:
    """Swagger UI as served offline, as a PNG."""
    proc, url = start_server()
    try:
        profile = target.parent / ".chromium-profile"
        result = browse(
            f"{url}/docs", profile, f"--screenshot={target.resolve()}", "--window-size=1280,1900"
        )
        shutil.rmtree(profile, ignore_errors=True)
        if result.returncode != 0:
            raise SystemExit(result.stderr)
    finally:
        stop_server(proc)


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/swagger-ui.png"))
