"""The playground at /ui in a real headless browser: Debian's chromium driven by playwright, with
every name resolution and every connection off loopback refused."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.support.stack import CORPUS, Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # `make browser` installs it
# research/infra.md §5: the last two flags are what keeps chromium from resolving or reaching
# anything but loopback (it probes Google hosts despite --disable-background-networking).
CHROME_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-quic", "--disable-extensions", "--disable-default-apps",
               "--metrics-recording-only", "--no-default-browser-check", "--disable-breakpad",
               "--disable-domain-reliability", "--disable-client-side-phishing-detection",
               "--proxy-server=http://127.0.0.1:9",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
FOUR_PAGES = CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make browser` installs Debian's"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[tuple[Page, list[str], list[str]]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    refused: list[str] = []
    errors: list[str] = []

    def only_the_api(route: Route) -> None:
        if route.request.url.startswith(stack.url + "/"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_api)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page, refused, errors
    context.close()


def test_playground_runs_a_job_end_to_end(page: tuple[Page, list[str], list[str]], stack: Stack,
                                          tenant: dict[str, str]) -> None:
    tab, refused, errors = page
    response = tab.goto(f"{stack.url}/ui")
    assert response is not None and response.ok
    assert "default-src 'self'" in response.headers["content-security-policy"]

    tab.fill("#key", tenant["api_key"])
    tab.set_input_files("#file", str(FOUR_PAGES))
    expect(tab.locator("#document")).to_contain_text("ready, 4 page(s)", timeout=60_000)
    tab.select_option("#template", "contract")
    expect(tab.locator("#plan-summary")).to_contain_text("1 call(s)", timeout=30_000)
    expect(tab.locator("#plan-summary")).to_contain_text("estimated cost $")

    tab.click("#run")
    expect(tab.locator("#status")).to_have_text("succeeded", timeout=90_000)
    expect(tab.locator("#chunks")).to_have_text("1/1")
    expect(tab.locator("#usage")).to_contain_text("tokens in")
    expect(tab.locator("#result .leaf").first).to_be_visible(timeout=30_000)

    shown: dict[str, Any] = json.loads(tab.locator("#raw").text_content() or "{}")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {tenant['api_key']}"},
                      timeout=30) as client:
        stored = client.get(f"/v1/jobs/{shown['job_id']}/result").json()
        schema = json.loads(tab.locator("#schema").input_value())
    assert shown["data"] == stored["data"]
    jsonschema.validate(shown["data"], schema)
    leaves = tab.locator("#result .leaf")
    assert leaves.count() >= len(stored["data"])

    leaves.first.click()  # no citations asked for: the source panel says so
    expect(tab.locator("#source-title")).to_contain_text("0 source(s)")
    if os.environ.get("LONGDOC_SCREENSHOTS"):  # docs/playground.png is made this way
        tab.screenshot(path=str(Path(os.environ["LONGDOC_SCREENSHOTS"]) / "playground.png"),
                       full_page=True)
    assert refused == [] and errors == []


def test_a_refused_request_shows_the_api_error(page: tuple[Page, list[str], list[str]],
                                                stack: Stack) -> None:
    tab, _, errors = page
    tab.goto(f"{stack.url}/ui")
    tab.fill("#key", "ld_not_a_key")
    tab.set_input_files("#file", str(FOUR_PAGES))
    expect(tab.locator("#error")).to_contain_text("invalid API key", timeout=30_000)
    assert errors == []
