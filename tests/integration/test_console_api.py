"""The console's HTTP side: /ui/ served from the package with a strict policy,
and /v1/console/* reads scoped by key: an admin key reads every team, a team key
its own only (403 for another team, 404 for another team's key, 403 on every
admin route)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console_stack import CHAT_MODEL, IDLE_MODEL, console_stack, create_key
from tests.stack import ADMIN_KEY, Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with console_stack(Path(tmp_path_factory.mktemp("console-api"))) as (running, _):
        yield running


@pytest.fixture(scope="module")
def teams(stack: Stack) -> dict[str, dict[str, Any]]:
    """A key in team red, one in team blue, each used once."""
    keys = {
        "red": create_key(stack, name="red-1", team="red"),
        "blue": create_key(stack, name="blue-1", team="blue"),
    }
    for team, key in keys.items():
        stack.sdk(key["key"]).chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], user=f"{team}-user"
        )
    return keys


def get(stack: Stack, path: str, key: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{stack.base_url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def report(stack: Stack, key: str, want: int, **params: Any) -> dict[str, Any]:
    """The report once the ledger holds `want` requests (rows land in batches)."""
    deadline = time.monotonic() + 10
    while True:
        answer = get(
            stack, "/v1/console/usage", key, bucket="minute", since=time.time() - 3600, **params
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["summary"]["requests"] >= want or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_the_console_page_and_its_assets_are_served_with_a_strict_policy(stack: Stack) -> None:
    page = httpx.get(f"{stack.base_url}/ui/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<title>Aqueduct console</title>" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "http" not in policy  # no CDN, nothing off this origin
    for asset, kind in (
        ("app.js", "javascript"),
        ("style.css", "text/css"),
        ("vendor/chart.umd.js", "javascript"),
    ):
        answer = httpx.get(f"{stack.base_url}/ui/{asset}", timeout=10)
        assert answer.status_code == 200 and kind in answer.headers["content-type"], asset
    assert "Chart.js v4" in httpx.get(f"{stack.base_url}/ui/vendor/chart.umd.js").text[:200]
    moved = httpx.get(f"{stack.base_url}/ui", timeout=10)
    assert moved.status_code == 308 and moved.headers["location"] == "/ui/"
    missing = httpx.get(f"{stack.base_url}/ui/nothing.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_route"
    for outside in ("/ui/..%2Fconsole.py", "/ui/%2e%2e/console_api.py", "/ui/../app.py"):
        escaped = httpx.get(f"{stack.base_url}{outside}", timeout=10)
        assert escaped.status_code == 404 and "import" not in escaped.text, outside


def test_the_session_says_who_the_key_is_and_never_its_secret(
    stack: Stack, teams: dict[str, dict[str, Any]]
) -> None:
    red = teams["red"]
    answer = get(stack, "/v1/console/session", red["key"])
    assert answer.status_code == 200
    body = answer.json()
    assert body["key_id"] == red["id"] and body["team"] == "red" and body["admin"] is False
    assert red["key"] not in answer.text
    assert get(stack, "/v1/console/session", "sk-aq-wrong").status_code == 401


def test_an_admin_key_reads_every_team(stack: Stack, teams: dict[str, dict[str, Any]]) -> None:
    body = report(stack, ADMIN_KEY, 2)
    assert body["summary"]["requests"] == 2
    assert body["summary"]["input_tokens"] == 22 and body["summary"]["output_tokens"] == 4
    assert {row["team"] for row in body["top_teams"]} == {"red", "blue"}
    models = {row["model"]: row["requests"] for row in body["models"]}
    assert models == {CHAT_MODEL: 2, IDLE_MODEL: 0}  # the idle model too, at zero
    keys = get(stack, "/v1/console/keys", ADMIN_KEY).json()["data"]
    assert {"red", "blue", "admin"} <= {k["team"] for k in keys}
    assert all("key" not in k for k in keys)
    red = get(stack, "/v1/console/keys", ADMIN_KEY, team="red").json()["data"]
    assert [k["id"] for k in red] == [teams["red"]["id"]]


def test_a_team_key_reads_its_own_team_only(stack: Stack, teams: dict[str, dict[str, Any]]) -> None:
    red, blue = teams["red"], teams["blue"]
    body = report(stack, red["key"], 1)
    assert body["team"] == "red" and body["summary"]["requests"] == 1
    assert [row["key_id"] for row in body["top_keys"]] == [red["id"]]
    assert body["top_teams"] == []
    mine = report(stack, red["key"], 1, key_id=red["id"])
    assert [(u["user"], u["requests"]) for u in mine["users"]] == [("red-user", 1)]

    other_team = get(stack, "/v1/console/usage", red["key"], team="blue")
    assert other_team.status_code == 403
    assert other_team.json()["error"]["param"] == "team"
    other_key = get(stack, "/v1/console/usage", red["key"], key_id=blue["id"])
    assert other_key.status_code == 404 and other_key.json()["error"]["param"] == "key_id"
    assert get(stack, "/v1/console/keys", red["key"], team="blue").status_code == 403
    keys = get(stack, "/v1/console/keys", red["key"]).json()["data"]
    assert [k["id"] for k in keys] == [red["id"]] and keys[0]["preview"]

    for method, path in (
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys"),
        ("GET", f"/v1/admin/keys/{blue['id']}"),
        ("DELETE", f"/v1/admin/keys/{blue['id']}"),
        ("GET", "/v1/admin/teams/red"),
        ("GET", "/v1/admin/usage"),
    ):
        answer = httpx.request(
            method,
            f"{stack.base_url}{path}",
            headers={"Authorization": f"Bearer {red['key']}"},
            json={"name": "x"} if method == "POST" else None,
            timeout=10,
        )
        assert answer.status_code == 403, (method, path, answer.text)


def test_models_show_capabilities_and_upstream_health(
    stack: Stack, teams: dict[str, dict[str, Any]]
) -> None:
    admin = {m["id"]: m for m in get(stack, "/v1/console/models", ADMIN_KEY).json()["data"]}
    assert admin[IDLE_MODEL]["capabilities"] == ["vision"]
    upstream = admin[CHAT_MODEL]["upstreams"][0]
    assert upstream["state"] == "closed" and upstream["label"].startswith("http://127.0.0.1:")
    team = get(stack, "/v1/console/models", teams["red"]["key"]).json()["data"]
    assert all(u["label"] == "upstream 1" for m in team for u in m["upstreams"])


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"bucket": "week"}, "bucket"),
        ({"since": "yesterday"}, "since"),
        ({"until": "-5"}, "until"),
        ({"since": 100, "until": 50}, "until"),
        ({"since": 0, "bucket": "minute"}, "bucket"),
        ({"top": "0"}, "top"),
        ({"top": "500"}, "top"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_report_parameters_are_400_naming_them(
    stack: Stack, params: dict[str, Any], param: str
) -> None:
    answer = get(stack, "/v1/console/usage", ADMIN_KEY, **params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
