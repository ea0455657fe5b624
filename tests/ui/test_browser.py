"""The console in a real browser: ``keel ui`` on the project the demo leaves behind, driven by
Playwright in Debian's Chromium. Every page is opened and checked for what a person would see,
an operator promotes and rolls back through the pages, a reader's attempt is refused, live
parts change without a reload, and each page is photographed into build/screenshots/ (1280
px wide, and the overview and a route on a narrow window) for review.

Chromium is not optional: without /usr/bin/chromium these tests fail saying how to install it
(``.ci/run`` installs it when it is missing)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keel.controller.trail import read as read_trail
from keel.monitoring.events import history
from keel.project import Project
from keel.serving.auth import AUDIT
from keel.serving.traffic_manager import TRAFFIC

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
#: Long enough for a loaded two-core machine; the pages refresh every second.
WAIT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Console:
    """``keel ui`` running on the demo's project, and what the tests set up in it."""

    url: str
    project: Project
    serving: str  # what the fraud route serves (fraud@champion)
    candidate: str  # what its shadow compares (fraud@challenger), set to be promoted
    reader: str
    operator: str


def _setup(project: Project) -> tuple[str, str]:
    """A candidate to promote (the route's challenger moved to another version) and a job
    too large for any queue, waiting with Kueue's reason."""
    from keel.jobs.manager import submit

    registry = project.registry
    serving = registry.aliases("fraud")["champion"]
    other = max(v.version for v in registry.versions("fraud") if v.version != serving)
    registry.set_alias("fraud", "challenger", other, reason="a candidate for the console's test")
    spec = project.job(
        "command", argv=[sys.executable, "-c", "pass"], name="too-big", requests={"cpu": 64}
    )
    submit(project.settings.jobs, project.jobs, spec, now=time.time())
    manager = project.job_manager()
    try:
        manager.tick()  # one scheduling cycle records why it waits
    finally:
        manager.close()
    return f"fraud@{serving}", f"fraud@{other}"


@pytest.fixture(scope="module")
def demo_console(demo_run: Any, tokens: Any) -> Iterator[Console]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the console's browser tests need Chromium at {CHROMIUM}: apt-get install -y "
            "chromium (.ci/run installs it when it is missing)"
        )
    config = demo_run.project_dir / "keel.toml"
    project = Project.load(config)
    serving, candidate = _setup(project)
    port = _free_port()
    hashes = " ".join(f"{t.name}:{t.role}:{t.hash}" for t in tokens.auth.tokens)
    out = demo_run.project_dir / "keel-ui.out"
    command = ["ui", "--port", str(port), "--server-url", "http://127.0.0.1:9", "--refresh", "1"]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keel", "-c", str(config), *command],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KEEL_AUTH_TOKENS": hashes},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"keel ui did not start:\n{out.read_text()}")
            time.sleep(0.2)
        yield Console(url, project, serving, candidate, tokens.reader, tokens.operator)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        project.registry.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


def signed_in(browser: Any, console: Console, token: str, viewport: dict[str, int] = WIDE) -> Any:
    """A page of a new browser context, signed in through the form with ``token``; what the
    browser reports as errors (a script failing, something the Content-Security-Policy
    refused) is kept in its ``errors``."""
    page = browser.new_context(viewport=viewport).new_page()
    page.set_default_timeout(WAIT_MS)
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"{console.url}/")
    assert "/signin" in page.url  # the project has tokens: reading needs one
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{console.url}/")
    return page


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def events(project: Project, topic: str) -> list[dict[str, Any]]:
    log = project.log
    return [
        r
        for p in range(log.topic(topic).partitions)
        for r in log.read(topic, p, 0, 10**6).to_pylist()
    ]


def test_every_page_shows_what_a_person_would_see(browser: Any, demo_console: Console) -> None:
    from playwright.sync_api import expect

    c, project = demo_console, demo_console.project
    page = signed_in(browser, c, c.reader)
    expect(page.get_by_text("Signed in as viewer (reader)")).to_be_visible()

    # Overview: the fraud route and the version it serves; alerts say "alert" in words.
    page.goto(f"{c.url}/")
    expect(page.locator('#routes tr[data-route="fraud"] td.serving')).to_have_text(c.serving)
    expect(page.locator("#h-alerts + ul .badge.alert").first).to_have_text("alert")
    # Keyboard: the first Tab reaches the skip link, which leads to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    shoot(page, "overview")

    # Route: what it serves, its shadow's comparison as a chart with its tolerance.
    page.goto(f"{c.url}/routes/fraud")
    expect(page.locator("#serving")).to_have_text(c.serving)
    shadow = page.locator("figure", has_text="Shadow fraud@")
    expect(shadow.locator('svg[role="img"]')).to_be_visible()
    assert shadow.locator('circle[data-series="mean discrepancy"]').count() > 1
    expect(shadow.locator("ul.legend")).to_contain_text("tolerance")
    shoot(page, "route-fraud")

    # Model: a lineage node per feature view of the version served.
    page.goto(f"{c.url}/models/fraud")
    views = project.registry.lineage("fraud", "champion")["training_set"]["views"]
    nodes = page.locator('.lineage-node[data-kind="view"]')
    expect(nodes).to_have_count(len(views))
    for view in views:
        expect(page.locator(f'.lineage-node[data-id="view:{view}"]')).to_be_visible()
    expect(page.locator('.lineage-node[data-kind="training-set"]')).to_have_count(1)
    shoot(page, "model-fraud")

    # Features: every view, and a lookup of an entity that paid.
    page.goto(f"{c.url}/features")
    expect(page.locator("#views tbody tr")).to_have_count(len(project.features.views))
    card = project.log.read("shop.payments", 0, 0, 1).to_pylist()[0]["card_id"]
    page.get_by_label("Feature view", exact=True).select_option("card_payments")
    page.get_by_label("Entity key").fill(str(card))
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("#lookup caption")).to_have_text(
        f"Online values of card_payments for key {card}"
    )
    shoot(page, "features")

    # Monitor: the loss chart has one point per window.
    page.goto(f"{c.url}/monitor/fraud")
    windows = [w for w in history(project.log, "fraud")[-120:] if w.get("performance")]
    perf = page.locator("figure", has_text="estimated logloss against its threshold")
    expect(perf.locator('circle[data-series="estimated"]')).to_have_count(len(windows))
    expect(page.locator("#windows .badge.alert").first).to_have_text("alert")
    shoot(page, "monitor-fraud")

    # Jobs: the pending job and Kueue's reason.
    page.goto(f"{c.url}/jobs")
    expect(page.locator("#pending td.reason").first).to_contain_text(
        "request > maximum capacity (64 > 3)"
    )
    expect(page.locator("#queues")).to_contain_text("training")
    shoot(page, "jobs")

    # Loop: the causal chain, from the alert on.
    page.goto(f"{c.url}/loop/fraud")
    kinds = [e.kind for e in read_trail(project.log, "fraud")]
    expect(page.locator('ol.timeline li[data-kind="trigger"]')).to_have_count(
        kinds.count("trigger")
    )
    expect(page.locator('ol.timeline li[data-kind="swap"]').first).to_contain_text("swap")
    shoot(page, "loop-fraud")

    # Explanations: a prediction's contributions as bars.
    page.goto(f"{c.url}/explain/fraud")
    bars = page.locator("svg.bars")
    expect(bars).to_be_visible()
    assert int(bars.get_attribute("data-bars")) > 0
    shoot(page, "explain-fraud")

    assert page.errors == [], page.errors

    # A narrow window: nothing wider than the screen but the tables' own scrolling.
    narrow = signed_in(browser, c, c.reader, NARROW)
    for path, name in (("/", "overview-narrow"), ("/routes/fraud", "route-fraud-narrow")):
        narrow.goto(f"{c.url}{path}")
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW["width"] + 1, f"{path} is {width} px wide on a narrow window"
        shoot(narrow, name)
    assert narrow.errors == [], narrow.errors


def test_a_reader_may_not_act(browser: Any, demo_console: Console) -> None:
    from playwright.sync_api import expect

    c = demo_console
    page = signed_in(browser, c, c.reader)
    page.goto(f"{c.url}/routes/fraud")
    page.get_by_role("link", name="Promote the candidate").click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("token 'viewer' has role reader")
    # Posting the form anyway (with the session's own CSRF token) is refused, and audited.
    page.goto(f"{c.url}/routes/fraud")
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    before = len(events(c.project, AUDIT.name))
    answer = page.request.post(
        f"{c.url}/routes/fraud/promote",
        form={"csrf": csrf, "confirm": "yes", "serving": "1", "target": "2"},
        headers={"origin": c.url},
    )
    assert answer.status == 403
    assert c.project.registry.aliases("fraud")["champion"] == int(c.serving.split("@")[1])
    (audit,) = events(c.project, AUDIT.name)[before:]
    assert (audit["who"], audit["role"], audit["status"]) == ("viewer", "reader", 403)


def test_an_operator_promotes_and_rolls_back_through_the_pages(
    browser: Any, demo_console: Console
) -> None:
    from playwright.sync_api import expect

    c = demo_console
    registry = c.project.registry
    page = signed_in(browser, c, c.operator)
    before = len(events(c.project, AUDIT.name))

    page.goto(f"{c.url}/routes/fraud")
    page.get_by_role("link", name="Promote the candidate").click()
    expect(page.locator("#summary")).to_contain_text(f"from {c.serving} to {c.candidate}")
    shoot(page, "confirm-promote")
    page.get_by_role("button", name="Confirm: promote fraud").click()
    expect(page.get_by_role("status")).to_contain_text(
        f"promoted by oncall (keel ui): {c.serving} → {c.candidate}"
    )
    expect(page.locator("#serving")).to_have_text(c.candidate)
    assert f"fraud@{registry.aliases('fraud')['champion']}" == c.candidate

    page.get_by_role("link", name="Roll back").click()
    expect(page.locator("#summary")).to_contain_text(f"from {c.candidate} to {c.serving}")
    page.get_by_role("button", name="Confirm: roll back fraud").click()
    expect(page.get_by_role("status")).to_contain_text("rolled back by oncall (keel ui)")
    expect(page.locator("#serving")).to_have_text(c.serving)
    assert f"fraud@{registry.aliases('fraud')['champion']}" == c.serving
    shoot(page, "route-after-rollback")

    # Both are on the log, where the CLI's and the controller's are, naming who.
    decisions = [
        json.loads(e["payload"])
        for e in events(c.project, TRAFFIC.name)
        if e["kind"] == "decision" and e["route"] == "fraud"
    ]
    assert [(d["action"], d["by"]) for d in decisions[-2:]] == [
        ("promote", "oncall (keel ui)"),
        ("rollback", "oncall (keel ui)"),
    ]
    audits = events(c.project, AUDIT.name)[before:]
    assert [(a["who"], a["status"], a["path"]) for a in audits] == [
        ("oncall", 303, "/routes/fraud/promote"),
        ("oncall", 303, "/routes/fraud/rollback"),
    ]
    moves = registry.alias_history("fraud", "champion")[-2:]
    assert all("oncall" in m.reason for m in moves)


def test_pages_refresh_themselves(browser: Any, demo_console: Console) -> None:
    from playwright.sync_api import expect

    c = demo_console
    registry = c.project.registry
    page = signed_in(browser, c, c.reader)
    page.goto(f"{c.url}/")
    cell = page.locator('#routes tr[data-route="fraud"] td.serving')
    expect(cell).to_have_text(c.serving)
    page.evaluate("window.keelMarker = 'still this page'")
    number = int(c.candidate.split("@")[1])
    registry.set_alias("fraud", "champion", number, reason="the console's live test")
    try:
        expect(cell).to_have_text(c.candidate)  # the live region refreshed...
        assert page.evaluate("window.keelMarker") == "still this page"  # ...not the page
    finally:
        registry.set_alias("fraud", "champion", int(c.serving.split("@")[1]), reason="put back")
    expect(cell).to_have_text(c.serving)
    assert re.search(r"Updated \d\d:\d\d:\d\d UTC", page.locator(".updated").inner_text())
