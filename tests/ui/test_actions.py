"""Acting from the console: only with the operator role, only the console's own confirmed
form, only on what the person saw; every attempt audited on keel.audit, and what was done
recorded where the CLI records it (the decision on keel.traffic, the alias move in the
registry, the pause on keel.loop) naming who did it."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest

from keel.config import AuthConfig
from keel.controller.trail import read as read_trail
from keel.serving.auth import AUDIT
from keel.serving.traffic_manager import TRAFFIC


def events(log: Any, topic: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in range(log.topic(topic).partitions):
        out += log.read(topic, p, 0, 100_000).to_pylist()
    return out


def audits(project: Any) -> list[dict[str, Any]]:
    return events(project.log, AUDIT.name)


def decisions(project: Any) -> list[dict[str, Any]]:
    found = [e for e in events(project.log, TRAFFIC.name) if e["kind"] == "decision"]
    return [json.loads(e["payload"]) for e in found]


def champion(project: Any) -> int:
    return project.registry.aliases("fraud")["champion"]


def sign_in(client: Any, token: str) -> None:
    r = client.post("/signin", data={"token": token, "next": "/"})
    assert r.status_code == 303, r.text


def form_fields(html: str) -> dict[str, str]:
    """The hidden fields of the page's action form (the confirmation's)."""
    form = html[html.index('<form method="post" action="http://testserver/routes/') :]
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form))


def test_nobody_acts_when_the_project_has_no_tokens(console, ui_project) -> None:
    client = console(AuthConfig())
    r = client.get("/routes/fraud/promote")
    assert r.status_code == 403 and "keel token new NAME --role operator" in r.text
    before = len(audits(ui_project))
    r = client.post("/routes/fraud/promote", data={"confirm": "yes", "csrf": "x"})
    assert r.status_code == 403 and champion(ui_project) == 2
    last = audits(ui_project)[before:]
    assert [(a["who"], a["status"], a["path"]) for a in last] == [
        ("anonymous", 403, "/routes/fraud/promote")
    ]


def test_a_reader_sees_but_may_not_act_and_the_refusal_is_audited(
    console, ui_project, tokens
) -> None:
    client = console(tokens.auth)
    sign_in(client, tokens.reader)
    assert client.get("/routes/fraud").status_code == 200
    r = client.get("/routes/fraud/promote")
    assert r.status_code == 403 and "token 'viewer' has role reader" in html.unescape(r.text)
    page = client.get("/routes/fraud").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    before = len(audits(ui_project))
    r = client.post(
        "/routes/fraud/promote",
        data={"csrf": csrf, "confirm": "yes", "serving": "2", "target": "3"},
    )
    assert r.status_code == 403 and champion(ui_project) == 2
    (audit,) = audits(ui_project)[before:]
    assert (audit["who"], audit["role"], audit["status"]) == ("viewer", "reader", 403)
    assert json.loads(audit["body"])["action"] == "promote"


@pytest.mark.parametrize(
    "change, status",
    [
        pytest.param({"csrf": "forged"}, 403, id="csrf-forged"),
        pytest.param({"csrf": None}, 403, id="csrf-missing"),
        pytest.param({"confirm": None}, 400, id="not-confirmed"),
        pytest.param({"origin": "http://elsewhere.example"}, 403, id="other-origin"),
    ],
)
def test_an_action_is_only_the_consoles_own_confirmed_form(
    console, ui_project, tokens, change: dict[str, Any], status: int
) -> None:
    client = console(tokens.auth)
    sign_in(client, tokens.operator)
    fields = form_fields(client.get("/routes/fraud/promote").text)
    origin = change.pop("origin", None)
    for key, value in change.items():
        if value is None:
            fields.pop(key)
        else:
            fields[key] = value
    headers = {"origin": origin} if origin else {}
    r = client.post("/routes/fraud/promote", data=fields, headers=headers)
    assert r.status_code == status, r.text
    assert champion(ui_project) == 2


def test_an_operator_promotes_then_rolls_back(console, ui_project, tokens) -> None:
    client = console(tokens.auth)
    sign_in(client, tokens.operator)
    page = client.get("/routes/fraud/promote").text
    assert "fraud@champion moves from fraud@2 to fraud@3" in page
    assert "It will be recorded on the log as done by <strong>oncall</strong>" in page
    before = len(audits(ui_project))
    r = client.post("/routes/fraud/promote", data=form_fields(page))
    assert r.status_code == 303 and "/routes/fraud?flash=" in r.headers["location"]
    assert champion(ui_project) == 3
    shown = client.get(r.headers["location"]).text
    assert "Done: promoted by oncall (keel ui): fraud@2 → fraud@3" in shown
    assert re.search(r'id="serving">fraud@3<', shown)
    decision = decisions(ui_project)[-1]
    assert decision["action"] == "promote" and decision["by"] == "oncall (keel ui)"
    assert decision["evidence"]["candidate"] == "fraud@3"  # what the loop follows
    assert decision["evidence"]["samples"] == 200  # the shadow's evidence as it stood
    move = ui_project.registry.alias_history("fraud", "champion")[-1]
    assert (move.from_version, move.to_version) == (2, 3) and "oncall" in move.reason

    page = client.get("/routes/fraud/rollback").text
    assert "fraud@champion moves back from fraud@3 to fraud@2" in page
    r = client.post("/routes/fraud/rollback", data=form_fields(page))
    assert r.status_code == 303 and champion(ui_project) == 2
    decision = decisions(ui_project)[-1]
    assert decision["action"] == "rollback" and decision["by"] == "oncall (keel ui)"
    done = audits(ui_project)[before:]
    assert [(a["who"], a["status"], a["path"]) for a in done] == [
        ("oncall", 303, "/routes/fraud/promote"),
        ("oncall", 303, "/routes/fraud/rollback"),
    ]


def test_a_confirmation_gone_stale_changes_nothing(console, ui_project, tokens) -> None:
    client = console(tokens.auth)
    sign_in(client, tokens.operator)
    fields = form_fields(client.get("/routes/fraud/promote").text)
    ui_project.registry.set_alias("fraud", "champion", 1, reason="someone else, meanwhile")
    try:
        r = client.post("/routes/fraud/promote", data=fields)
        assert r.status_code == 409 and "nothing was done" in r.text
        assert champion(ui_project) == 1
    finally:
        ui_project.registry.set_alias("fraud", "champion", 2, reason="put back")


def test_an_operator_rejects_and_pauses_and_resumes_the_loop(console, ui_project, tokens) -> None:
    client = console(tokens.auth)
    sign_in(client, tokens.operator)
    r = client.post(
        "/routes/fraud/reject", data=form_fields(client.get("/routes/fraud/reject").text)
    )
    assert r.status_code == 303 and champion(ui_project) == 2
    decision = decisions(ui_project)[-1]
    assert (decision["action"], decision["by"]) == ("reject", "oncall (keel ui)")
    assert decision["evidence"]["candidate"] == "fraud@3"

    page = client.get("/routes/fraud/pause").text
    assert "loop stops acting on alerts" in page
    assert client.post("/routes/fraud/pause", data=form_fields(page)).status_code == 303
    trail = list(read_trail(ui_project.log, "fraud"))
    assert (trail[-1].kind, trail[-1].payload["by"]) == ("paused", "oncall (keel ui)")
    assert 'href="http://testserver/routes/fraud/resume"' in client.get("/routes/fraud").text
    page = client.get("/routes/fraud/resume").text
    assert client.post("/routes/fraud/resume", data=form_fields(page)).status_code == 303
    assert list(read_trail(ui_project.log, "fraud"))[-1].kind == "resumed"
    # A route without a loop has none to pause.
    assert client.get("/routes/embed/pause").status_code == 400
    assert client.get("/routes/fraud/explode").status_code == 404


def test_signing_in_and_out(console, tokens) -> None:
    client = console(tokens.auth)
    r = client.post("/signin", data={"token": "keel_not-a-token", "next": "/"})
    assert r.status_code == 401 and "not a token of this project" in r.text
    r = client.post(
        "/signin", data={"token": tokens.operator, "next": "https://elsewhere.example/"}
    )
    assert r.status_code == 303 and r.headers["location"] == "http://testserver/"
    page = client.get("/").text
    assert "Signed in as <strong>oncall</strong> (operator)" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/signout", data={"csrf": "forged"}).status_code == 403
    r = client.post("/signout", data={"csrf": csrf})
    assert r.status_code == 303
    assert client.get("/").status_code == 303  # back to signing in
    r = client.post("/signin", data={"token": "x"}, headers={"content-type": "text/plain"})
    assert r.status_code == 400
