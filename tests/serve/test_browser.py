"""The page and the docs in a real browser: headless Chromium (Debian's `chromium` package, which CI installs)
driven by Playwright against a live `seqrec serve` on a tiny artifact. Every request the browser makes is
watched: none may fail, answer an error, leave this origin or carry the key in its URL, and the console must
stay free of errors (a Content-Security-Policy violation is one). The artifact's titles are HTML on purpose:
the page must show them as text."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from seqrec.artifact import Artifact, save_artifact
from seqrec.data.preprocess import build_dataset
from seqrec.models.registry import create

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the `test` extra has it)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: "
                                "apt-get install chromium)")
KEY = "browser-key-0123456789"
TIMEOUT_MS = 15_000  # generous for a loaded 2-core box; a passing run takes a few seconds in all
sync_api.expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class Watch:
    """What the browser did: every request, and everything that went wrong."""

    origin: str
    requests: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status}: {r.url}"))
        page.on("request", lambda r: self.requests.append(r))

    def check(self) -> None:
        assert not self.problems, self.problems
        elsewhere = [r.url for r in self.requests if not r.url.startswith((self.origin, "data:"))]
        assert not elsewhere, elsewhere
        assert not [r.url for r in self.requests if KEY in r.url]


def title(item: int | str) -> str:
    """Markup that would fetch /pwned/... and set window.pwned if a page ever parsed it as HTML."""
    return f'<img src="/pwned/{item}" onerror="window.pwned = 1">Item {item} & <b>more</b>'


def hostile_artifact(path: Path) -> Path:
    """30 users with 8 of 40 items each (ids 100..139), gru4rec with random weights, titles that are HTML."""
    rng = np.random.default_rng(0)
    rows = [(user, int(item), t) for user in range(1, 31)
            for t, item in enumerate(rng.choice(np.arange(100, 140), size=8, replace=False))]
    frame = pd.DataFrame(rows, columns=["user", "item", "time"])
    data = build_dataset(frame, name="hostile", titles={i: title(i) for i in range(100, 140)})
    torch.manual_seed(0)
    net = create("gru4rec", n_items=data.n_items, max_len=20, dim=16, hidden=16, n_layers=1)
    return Path(save_artifact(path, Artifact("gru4rec", net.eval(), data)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, port_factory: Callable[[], int],
           serve_process: Callable[..., subprocess.Popen[bytes]]) -> Iterator[str]:
    root = tmp_path_factory.mktemp("browser")
    port = port_factory()
    proc = serve_process(hostile_artifact(root / "artifact"), port, root / "events.db", KEY)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        # Debian's binary: Playwright never downloads a browser of its own here
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[tuple[Any, Watch]]:
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    watch = Watch(server)
    watch.attach(tab)
    yield tab, watch
    context.close()


def item_ids(page: Any, list_id: str) -> list[str]:
    return list(page.eval_on_selector_all(f"#{list_id} > li", "rows => rows.map(r => r.dataset.itemId)"))


def test_pick_a_user_record_an_event_and_see_the_recommendations_change(page: tuple[Any, Watch], server: str) -> None:
    tab, watch = page
    expect = sync_api.expect
    tab.goto(f"{server}/")
    expect(tab.locator("#model")).to_contain_text("gru4rec")
    expect(tab.locator("#users-note")).to_contain_text("API key")  # no key yet: no users asked for
    tab.fill("#key", KEY)
    tab.click("#key-form button[type=submit]")
    users = tab.locator("#users button")
    expect(users.first).to_be_visible()
    tab.locator("#users button", has_text=re.compile(r"^2$")).click()
    expect(tab.locator("#user-panel")).to_have_attribute("aria-busy", "false")
    expect(tab.locator("#recs > li")).to_have_count(10)
    history_before = item_ids(tab, "history")
    recs_before = item_ids(tab, "recs")
    assert history_before and len(set(recs_before)) == 10
    first = tab.locator("#history > li .title").first
    assert first.inner_text() == title(history_before[0])  # the title, as text

    chosen = recs_before[0]
    with tab.expect_request(lambda r: r.url.endswith("/v1/events") and r.method == "POST") as posted:
        tab.locator("#recs > li").first.get_by_role("button", name="Record").click()
    assert posted.value.headers.get("x-api-key") == KEY  # the key travels in the header
    assert posted.value.post_data_json == {"user_id": "2", "item_id": int(chosen)}
    expect(tab.locator("#history > li").last).to_have_attribute("data-item-id", chosen)
    expect(tab.locator("#status")).to_contain_text("Recorded")
    recs_after = item_ids(tab, "recs")
    assert chosen not in recs_after and len(recs_after) == 10 and recs_after != recs_before

    # the store has it: the service's own answer, outside the browser
    stored = httpx.get(f"{server}/v1/users/2/history", params={"limit": 1}, headers={"X-API-Key": KEY}).json()
    assert stored["items"] == [{"item_id": int(chosen), "title": title(chosen)}]

    tab.locator("#recs > li .title").first.click()  # similar items for any item
    expect(tab.locator("#similar > li")).to_have_count(10)
    assert tab.evaluate("sessionStorage.getItem('seqrec.apiKey')") == KEY
    # no title was parsed as markup: no element made from one, no handler run (nor /pwned fetched: watch)
    assert tab.evaluate("document.querySelectorAll('main img, main b').length") == 0
    assert tab.evaluate("window.pwned === undefined")
    watch.check()


def test_swagger_ui_renders_from_local_files(page: tuple[Any, Watch], server: str) -> None:
    tab, watch = page
    tab.goto(f"{server}/docs")
    expect = sync_api.expect
    expect(tab.locator(".swagger-ui .info .title")).to_contain_text("seqrec")
    events = tab.locator(".opblock-summary-path", has_text="/v1/events").first
    expect(events).to_be_visible()
    documented = httpx.get(f"{server}/openapi.json").json()["paths"]
    expect(tab.locator(".opblock")).to_have_count(sum(len(ops) for ops in documented.values()))  # every one
    events.click()  # an operation opened: its examples and schemas render too, under the same policy
    expect(tab.locator(".opblock.is-open .opblock-description-wrapper").first).to_be_visible()
    tab.get_by_role("button", name="Try it out").click()
    expect(tab.locator(".opblock.is-open .body-param").first).to_be_visible()
    watch.check()
    assert any(r.url.endswith("/docs-assets/swagger-ui-bundle.js") for r in watch.requests)


def test_redoc_is_not_served(server: str) -> None:
    """ReDoc's bundle loads its logo from its vendor's CDN whatever it is told: Swagger UI is the docs page."""
    assert httpx.get(f"{server}/redoc").status_code == 404
