"""Every page of the console on a small project, as its HTML says it: what is served, the
shadow converging, lineage, features, windows, queues, the loop's trail, explanations; and
what the console sends along (security headers, the live region HTMX refreshes)."""

from __future__ import annotations

import html
import re

import pytest

from keel.config import AuthConfig
from keel.controller.trail import read
from keel.monitoring.events import history


def text(page: str) -> str:
    """The page's text as read: tags removed, entities decoded, spaces collapsed."""
    words = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))
    return re.sub(r" ([:,.;)])", r"\1", words)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="overview"),
        pytest.param("/routes/fraud", id="route"),
        pytest.param("/routes/embed", id="route-builtin"),
        pytest.param("/routes/recommend", id="route-recommender"),
        pytest.param("/models", id="models"),
        pytest.param("/models/fraud", id="model"),
        pytest.param("/features", id="features"),
        pytest.param("/monitor/fraud", id="monitor"),
        pytest.param("/jobs", id="jobs"),
        pytest.param("/loop/fraud", id="loop"),
        pytest.param("/explain/fraud", id="explain"),
        pytest.param("/signin", id="signin"),
    ],
)
def test_every_page_answers_with_a_whole_accessible_page(console, path: str) -> None:
    client = console()
    r = client.get(path)
    assert r.status_code == 200, r.text
    html = r.text
    assert html.startswith("<!doctype html>") and '<html lang="en">' in html
    assert '<a class="skip" href="#main">' in html and '<main id="main"' in html
    assert '<nav class="main" aria-label="Main">' in html
    # Every chart is an image with a title and a description, and its data as a table.
    assert html.count('role="img"') == html.count("<title id=") == html.count("<desc id=")
    # Nothing is loaded from elsewhere.
    assert not re.search(r'(src|href)="https?://(?!testserver)', html)
    headers = r.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"


def test_the_indexes_lead_to_the_only_route_that_has_the_page(console) -> None:
    client = console()
    for index, page in (("/monitor", "/monitor/fraud"), ("/loop", "/loop/fraud")):
        r = client.get(index)
        assert r.status_code == 303 and r.headers["location"].endswith(page)
    # Two routes explain (fraud and recommend have [routes.explain]? only fraud does).
    r = client.get("/explain")
    assert r.status_code in (200, 303)


def test_overview_shows_routes_alerts_decisions_and_queues(console, ui_project) -> None:
    page = text(console().get("/").text)
    assert "fraud fraud@champion fraud@2" in page  # route, its model, the version it serves
    assert "no server answers" in page
    assert "alert fraud window 5: drift:user_activity__events_1d" in page
    assert "promote fraud: over 3,600 s" in page
    assert "training keel" in page and "serving-jobs keel" in page
    assert "pending" in page and "request > maximum capacity (64 > 3)" in page


def test_route_page_shows_the_shadow_converging_and_what_may_be_done(console) -> None:
    html = console().get("/routes/fraud").text
    page = text(html)
    assert re.search(r'id="serving">fraud@2<', html)
    assert "fraud@3 against fraud@2" in page
    # The comparison's five snapshots, their interval as a band, the tolerance as a level.
    chart = html[html.index("Shadow fraud@3 against fraud@2") :]
    assert chart.count('data-series="mean discrepancy"') == 5
    assert 'class="band"' in chart and "tolerance" in chart
    assert "lies within the tolerance 0.8" in page  # the configured shadow's tolerance
    # The decision with its evidence, and each action with what it would do.
    assert "comparisons 400" in page and "discrepancy 0.04 (95% CI 0.03 – 0.05)" in page
    assert "fraud@champion moves from fraud@2 to fraud@3" in page
    assert "fraud@champion moves back from fraud@2 to fraud@1" in page
    assert 'href="http://testserver/routes/fraud/pause"' in html


def test_route_page_says_why_an_action_cannot_be_taken(console) -> None:
    page = text(console().get("/routes/embed").text)
    assert "Not now: route 'embed' serves 'builtin:all-MiniLM-L6-v2', not a model by alias" in page
    r = console().get("/routes/nope")
    assert r.status_code == 404 and "no route 'nope'" in text(r.text)


def test_model_page_draws_lineage_and_diffs_two_versions(console, ui_project) -> None:
    html = console().get("/models/fraud?version=3&a=1&b=3").text
    lineage = ui_project.registry.lineage("fraud", 3)
    views = lineage["training_set"]["views"]
    assert html.count('class="lineage-node" data-kind="view"') == len(views) == 2
    for kind in ("training-set", "version", "parent"):
        assert f'data-kind="{kind}"' in html
    page = text(html)
    assert "training set, 80 rows" in page and "parent fraud@2" in page
    assert "fields differ between fraud@1 and fraud@3" in page and "metrics.auc" in page
    assert "champion" in page and "retrained" in page  # aliases and their history
    assert console().get("/models/nope").status_code == 404


def test_features_page_lists_views_and_looks_an_entity_up(console, ui_project) -> None:
    client = console()
    page = text(client.get("/features").text)
    for v in ui_project.features.views:
        assert v.name in page and v.fingerprint[:12] in page
    assert "caught up" in page
    html = client.get("/features?view=card_payments&key=12").text
    assert 'id="lookup"' in html and "card_payments__payments_1h" in html
    html = client.get("/features?view=nope&key=12").text
    assert "no feature view" in text(html).lower() or "nope" in html


def test_monitor_page_draws_one_point_per_window(console, ui_project) -> None:
    html = console().get("/monitor/fraud").text
    windows = len(history(ui_project.log, "fraud"))
    assert windows == 6
    perf = html[html.index("estimated logloss against its threshold") :]
    assert perf.count('data-series="estimated"') == windows
    page = text(html)
    assert "alert drift: events_1d, performance" in page  # says "alert", in words
    assert "user_activity__events_1d: ks against its alert level" in page
    r = console().get("/monitor/embed")
    assert r.status_code == 400 and "not monitored" in r.text


def test_jobs_page_shows_quota_and_why_a_job_waits(console) -> None:
    html = console().get("/jobs").text
    page = text(html)
    assert "training keel default / cpu" in page and "0 / 2" in page
    assert re.search(r"too-big\S* .*request > maximum capacity \(64 &gt; 3\)", html) or (
        "request > maximum capacity (64 > 3)" in page
    )


def test_loop_page_shows_the_causal_chain(console, ui_project) -> None:
    html = console().get("/loop/fraud").text
    kinds = re.findall(r'data-kind="(\w+)"', html[html.index("Causal timeline") :])
    assert kinds == [e.kind for e in read(ui_project.log, "fraud")]
    assert "alert" in text(html) and "under way" in text(html)


def test_explanations_page_draws_the_contributions(console) -> None:
    html = console().get("/explain/fraud").text
    assert 'data-bars="3"' in html
    page = text(html)
    assert "amount = 420 +2.5" in page  # the feature's value, its signed contribution
    assert "user_activity__events_1d -0.15" in page
    # Explaining a row needs a running server: none answers, and the page says so.
    r = console().post("/explain/fraud", data={"row": '{"card_id": 1}'})
    assert r.status_code == 200 and "no Keel server answers" in r.text
    r = console().post("/explain/fraud", data={"row": "not json"})
    assert "the row is not JSON" in r.text


def test_the_live_region_refreshes_itself_from_the_same_page(console) -> None:
    html = console().get("/routes/fraud?flash=x").text
    live = re.search(r'<div id="live" hx-get="([^"]+)" hx-trigger="every 5s"', html)
    assert live is not None and live.group(1) == "/routes/fraud"  # the message is not polled
    assert 'src="http://testserver/static/htmx.min.js"' in html
    js = console().get("/static/htmx.min.js")
    assert js.status_code == 200 and "htmx" in js.text[:2000]


def test_pages_need_a_read_token_once_the_project_has_tokens(console, tokens) -> None:
    client = console(tokens.auth)
    r = client.get("/routes/fraud")
    assert r.status_code == 303 and "/signin?next=%2Froutes%2Ffraud" in r.headers["location"]
    r = client.get("/routes/fraud", headers={"hx-request": "true"})
    assert r.headers["hx-redirect"].startswith("http://testserver/signin")
    r = client.post("/signin", data={"token": tokens.reader, "next": "/routes/fraud"})
    assert r.status_code == 303 and r.headers["location"] == "/routes/fraud"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    assert tokens.reader not in r.headers["set-cookie"]  # only a session id
    assert client.get("/routes/fraud").status_code == 200
    assert console(AuthConfig()).get("/routes/fraud").status_code == 200  # no tokens: open


def test_a_bug_in_a_page_is_a_plain_500_page_with_the_security_headers(
    console, monkeypatch
) -> None:
    from keel.ui.data import jobs as jobs_data

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(jobs_data, "jobs_page", broken)
    client = console()
    r = client.get("/jobs")
    assert r.status_code == 500 and "Something went wrong" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/").status_code == 200  # the console lives on
