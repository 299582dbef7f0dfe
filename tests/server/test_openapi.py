"""The OpenAPI document: served, true to the app's routes, structurally sound, and true
to what the handlers answer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from quart_trio import QuartTrio

from config import Settings
from protocol import action_token
from server import auth, http_api
from server.http_app import create_app as real_create_app
from server.node import NodeServices
from server.openapi import (
    ACTION_TYPE_PATTERN,
    CODES,
    DEVICE_ID_PATTERN,
    USERNAME_PATTERN,
    UUID_PATTERN,
    openapi_document,
)
from tests.harness import node_api

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def capture_apps(monkeypatch: pytest.MonkeyPatch) -> list[QuartTrio]:
    """Make the node keep a reference to the app it builds, built exactly as it would be."""
    apps: list[QuartTrio] = []

    def create_app(services: NodeServices) -> QuartTrio:
        apps.append(real_create_app(services))
        return apps[-1]

    monkeypatch.setattr("server.node.create_app", create_app)
    return apps


def app_routes(app: QuartTrio) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route; HEAD comes with GET and is not listed."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return routes


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, m) for path, item in document["paths"].items() for m in item if m in METHODS}


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


async def test_served_document_matches_the_app_routes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = capture_apps(monkeypatch)
    async with node_api(settings) as (api, _, _):
        reply = await api.http.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    served = reply.json()
    assert served["openapi"].startswith("3.1")
    assert served == json.loads(json.dumps(openapi_document(max_limit=settings.read_max_limit)))

    [app] = apps
    routes, documented = app_routes(app), documented_routes(served)
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "documented operations the app does not serve"


def test_document_is_structurally_sound() -> None:
    document = openapi_document(max_limit=100)
    assert json.loads(json.dumps(document)) == document
    assert openapi_document(max_limit=100) is document, "built once per max_limit"

    for node in walk(document):
        if "$ref" in node:
            resolve(document, node["$ref"])

    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))

    schemes = document["components"]["securitySchemes"]
    mentioned: set[str] = set()
    for path, method, operation in operations(document):
        where = f"{method.upper()} {path}"
        assert operation["summary"] and operation["responses"], where
        params = [
            resolve(document, p["$ref"]) if "$ref" in p else p
            for p in operation.get("parameters", [])
        ]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"\{([^}]+)\}", path)), where
        assert all(p["required"] for p in params if p["in"] == "path"), where
        assert len({(p["name"], p["in"]) for p in params}) == len(params), where
        for requirement in operation["security"]:
            assert set(requirement) <= set(schemes), where
        for status, response in operation["responses"].items():
            assert response["description"], (where, status)
            if int(status) >= 400 and path != "/readyz":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (where, status)
                codes = re.findall(r"^- `([a-z_]+)`", response["description"], re.M)
                assert codes, (where, status)
                assert {CODES[code][0] for code in codes} == {int(status)}, (where, status)
                mentioned |= set(codes)
    assert set(CODES) - mentioned <= {"rate_limited", "not_ready"}, "codes no route answers"


def test_document_follows_the_handlers_bounds() -> None:
    # The handlers' own patterns and defaults, so the document cannot drift from them.
    for documented, enforced in (
        (UUID_PATTERN, http_api._UUID),
        (USERNAME_PATTERN, auth._USERNAME_RE),
        (DEVICE_ID_PATTERN, auth._DEVICE_RE),
        (ACTION_TYPE_PATTERN, action_token._ACTION_TYPE),
    ):
        assert documented == f"^{enforced.pattern}$"

    document = openapi_document(max_limit=40)
    paths = document["paths"]

    def query(path: str, name: str) -> dict[str, Any]:
        [param] = [p for p in paths[path]["get"]["parameters"] if p.get("name") == name]
        schema: dict[str, Any] = param["schema"]
        return schema

    top = query("/v1/leaderboards/{board_id}/top", "limit")
    assert (top["minimum"], top["maximum"], top["default"]) == (1, 40, http_api._DEFAULT_TOP)
    radius = query("/v1/leaderboards/{board_id}/around/{user_id}", "radius")
    assert (radius["minimum"], radius["maximum"]) == (0, 19)
    assert radius["default"] == http_api._DEFAULT_RADIUS
    history = query("/v1/users/{user_id}/history", "limit")
    assert (history["maximum"], history["default"]) == (40, http_api._HISTORY_DEFAULT)
    ranks = document["components"]["schemas"]["RanksRequest"]["properties"]["user_ids"]
    assert ranks["maxItems"] == 40


def test_document_passes_openapi_spec_validator() -> None:
    import openapi_spec_validator as validator

    validator.validate(openapi_document(max_limit=100))


async def test_replies_match_the_documented_schemas(settings: Settings) -> None:
    import jsonschema

    document = openapi_document(max_limit=settings.read_max_limit)
    seen: set[tuple[str, str]] = set()

    def check(method: str, template: str, reply: httpx.Response) -> Any:
        responses = document["paths"][template][method]["responses"]
        status = str(reply.status_code)
        assert status in responses, (method, template, reply.status_code, reply.text)
        body = reply.json()
        if reply.status_code >= 400 and "error" in body:
            assert f"`{body['error']['code']}`" in responses[status]["description"], reply.text
        schema = responses[status]["content"]["application/json"]["schema"]
        jsonschema.validate(body, schema | {"components": document["components"]})
        seen.add((template, method))
        return body

    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    async with node_api(settings) as (api, _, _):
        http = api.http
        check("get", "/healthz", await http.get("/healthz"))
        check("get", "/readyz", await http.get("/readyz"))
        device = await http.post("/v1/auth/device", json={"device_id": "device-0123456789"})
        ann = check("post", "/v1/auth/device", device)
        auth_header = {"Authorization": f"Bearer {ann['access_token']}"}
        registered = await http.post(
            "/v1/auth/register",
            json={"username": "bob", "email": "bob@example.com", "password": "long enough"},
        )
        check("post", "/v1/auth/register", registered)
        login = await http.post("/v1/auth/login", json={"email": "bob@example.com", "password": ""})
        check("post", "/v1/auth/login", login)
        refresh = await http.post("/v1/auth/refresh", json={"refresh_token": ann["refresh_token"]})
        ann |= check("post", "/v1/auth/refresh", refresh)
        auth_header = {"Authorization": f"Bearer {ann['access_token']}"}

        created = await http.post("/v1/admin/leaderboards", json={"id": "weekly"}, headers=admin)
        check("post", "/v1/admin/leaderboards", created)
        patched = await http.patch(
            "/v1/admin/leaderboards/weekly", json={"reset_schedule": "weekly"}, headers=admin
        )
        check("patch", "/v1/admin/leaderboards/{board_id}", patched)
        immutable = await http.patch(
            "/v1/admin/leaderboards/weekly", json={"operator": "set"}, headers=admin
        )
        check("patch", "/v1/admin/leaderboards/{board_id}", immutable)

        mint = await http.post(
            "/v1/actions",
            json={"user_id": ann["user_id"], "delta": 42},
            headers={"Authorization": f"Bearer {settings.service_key}"},
        )
        token = check("post", "/v1/actions", mint)["action_token"]
        scored = await http.post(
            "/v1/scores/update", json={"action_token": token}, headers=auth_header
        )
        check("post", "/v1/scores/update", scored)
        again = await http.post("/scores/update", json={"action_token": token}, headers=auth_header)
        check("post", "/scores/update", again)

        board = "/v1/leaderboards/{board_id}"
        check("get", "/v1/leaderboards", await http.get("/v1/leaderboards"))
        check("get", board, await http.get("/v1/leaderboards/global"))
        check("get", board, await http.get("/v1/leaderboards/nope"))
        check("get", f"{board}/top", await http.get("/v1/leaderboards/global/top?limit=1"))
        check("get", f"{board}/top", await http.get("/v1/leaderboards/global/top?cursor=%25"))
        user = ann["user_id"]
        around = await http.get(f"/v1/leaderboards/global/around/{user}?radius=1")
        check("get", f"{board}/around/{{user_id}}", around)
        check(
            "get",
            f"{board}/users/{{user_id}}",
            await http.get(f"/v1/leaderboards/global/users/{user}"),
        )
        ranks = await http.post("/v1/leaderboards/global/ranks", json={"user_ids": [user]})
        check("post", f"{board}/ranks", ranks)
        history = await http.get(f"/v1/users/{user}/history", headers=auth_header)
        check("get", "/v1/users/{user_id}/history", history)
        not_json = await http.post("/v1/leaderboards/global/ranks", content=b"user_ids=1")
        check("post", f"{board}/ranks", not_json)

        logout = await http.post("/v1/auth/logout", headers=auth_header)
        check("post", "/v1/auth/logout", logout)
    assert len(seen) >= 18
