"""Tokens and roles on every HTTP route of the server, and the audit trail of control-plane
calls, over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.routing import Route
from typer.testing import CliRunner

from keel.cli import app as cli
from keel.config import AuthConfig, TokenConfig
from keel.errors import ConfigError
from keel.serving import create_app
from keel.serving.app import ACCESS
from keel.serving.auth import AUDIT, GRANTS, Authenticator, hash_token, new_token

ROLES = ("admin", "operator", "reader", "client")


@pytest.fixture(scope="module")
def tokens() -> dict[str, tuple[str, TokenConfig]]:
    out = {}
    for role in ROLES:
        secret = new_token()
        out[role] = (secret, TokenConfig(name=f"{role}-1", role=role, hash=hash_token(secret)))
    return out


def _call(client: httpx.Client, method: str, template: str, token: str | None, rows) -> int:
    path = template.replace("{route}", "fraud").replace("{model}", "fraud")
    path = path.replace("{version}", "1")
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    body = None
    if method == "POST":
        body = {"rows": rows} if path.endswith(("predict", "explain")) else {}
    r = client.request(method, path, json=body, headers=headers)
    if r.status_code in (401, 403):
        assert "error" in r.json() and r.json()["error"], r.text
    if r.status_code == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    return r.status_code


def test_every_route_has_an_access_level(fraud_server, world) -> None:
    app = create_app(fraud_server())
    routes = {(m, r.path) for r in app.routes if isinstance(r, Route) for m in r.methods}
    assert {k for k in routes if k[0] != "HEAD"} == set(ACCESS)


@pytest.mark.parametrize("data_token", [False, True])
def test_each_route_with_and_without_each_role(
    fraud_server, world, running, tokens, data_token
) -> None:
    auth = AuthConfig(tokens=[t for _, t in tokens.values()], data_token=data_token)
    with (
        running(create_app(fraud_server(), auth=auth)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        for (method, template), level in ACCESS.items():
            protected = level not in ("health", "metrics", "data") or (
                level == "data" and data_token
            )
            anonymous = _call(client, method, template, None, world.rows[:2])
            forged = _call(client, method, template, "keel_forged", world.rows[:2])
            if protected:
                assert anonymous == 401 and forged == 401, (method, template)
            else:
                assert anonymous not in (401, 403) and forged not in (401, 403), template
            for role, (secret, _) in tokens.items():
                status = _call(client, method, template, secret, world.rows[:2])
                if protected and level not in GRANTS[role]:
                    assert status == 403, (role, method, template, status)
                else:
                    assert status not in (401, 403), (role, method, template, status)


def test_control_plane_changes_are_audited_with_the_token_name(
    fraud_server, world, running, tokens
) -> None:
    auth = AuthConfig(tokens=[t for _, t in tokens.values()])
    operator, reader = tokens["operator"][0], tokens["reader"][0]
    with (
        running(create_app(fraud_server(), auth=auth)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        change = {"shadow": {"model": "fraud@1", "sample": 0.5}}
        ok = client.post(
            "/v1/routes/fraud/traffic",
            json=change,
            headers={"authorization": f"Bearer {operator}"},
        )
        assert ok.status_code == 200, ok.text
        refused = client.post(
            "/v1/routes/fraud/decisions",
            json={"action": "promote"},
            headers={"authorization": f"Bearer {reader}"},
        )
        assert refused.status_code == 403
        assert "'reader-1' has role reader" in refused.json()["error"]
        assert "needs admin or operator" in refused.json()["error"]
        # Reads and predictions are not control-plane changes: not audited.
        client.get("/v1/routes", headers={"authorization": f"Bearer {reader}"})
    events = world.log.read(AUDIT.name, 0, 0, 100).to_pylist()
    assert [(e["who"], e["role"], e["method"], e["path"], e["status"]) for e in events] == [
        ("operator-1", "operator", "POST", "/v1/routes/fraud/traffic", 200),
        ("reader-1", "reader", "POST", "/v1/routes/fraud/decisions", 403),
    ]
    assert json.loads(events[0]["body"]) == change


def test_an_open_server_still_audits_who_changed_what(fraud_server, world, running) -> None:
    with (
        running(create_app(fraud_server())) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        r = client.post("/v1/routes/fraud/reload")
        assert r.status_code == 200, r.text
    events = world.log.read(AUDIT.name, 0, 0, 100).to_pylist()
    assert [(e["who"], e["path"], e["status"]) for e in events] == [
        ("anonymous", "/v1/routes/fraud/reload", 200)
    ]


def test_tokens_are_salted_hashes_checked_once(tokens) -> None:
    secret, token = tokens["client"]
    again = hash_token(secret)
    assert again != token.hash and secret not in token.hash  # a fresh salt each time
    auth = Authenticator(AuthConfig(tokens=[token]))
    assert auth.cached(secret) == (False, None)
    assert auth.verify(secret) == token and auth.cached(secret) == (True, token)
    assert auth.verify(secret + "x") is None and auth.cached(secret + "x") == (True, None)


def test_bad_token_settings_are_refused_with_the_reason(tokens) -> None:
    good = tokens["admin"][1]
    with pytest.raises(ConfigError, match="role 'root' is not one of"):
        TokenConfig(name="x", role="root", hash=good.hash)
    with pytest.raises(ConfigError, match="scrypt"):
        TokenConfig(name="x", role="admin", hash="plain-secret")
    with pytest.raises(ConfigError, match="given twice: admin-1"):
        AuthConfig(tokens=[good, good])
    with pytest.raises(ConfigError, match="KEEL_AUTH_TOKENS"):
        AuthConfig().with_env({"KEEL_AUTH_TOKENS": "just-a-name"})
    env = AuthConfig().with_env({"KEEL_AUTH_TOKENS": f"ci:client:{good.hash}"})
    assert [(t.name, t.role) for t in env.tokens] == [("ci", "client")]


def test_keel_token_new_prints_a_secret_and_the_entry_that_verifies_it(tmp_path) -> None:
    import tomllib

    result = CliRunner().invoke(cli, ["token", "new", "deploy-bot", "--role", "admin"])
    assert result.exit_code == 0, result.output
    secret = result.output.split("KEEL_TOKEN): ")[1].split()[0]
    entry = tomllib.loads(result.output.split("add to keel.toml:\n")[1])
    token = TokenConfig(**entry["auth"]["tokens"][0])
    assert (token.name, token.role) == ("deploy-bot", "admin")
    assert Authenticator(AuthConfig(tokens=[token])).verify(secret) == token
