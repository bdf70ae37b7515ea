"""The OpenAPI document: valid OpenAPI 3.1, and in step with the routes the relay registers."""

import pytest
from openapi_spec_validator import validate

from relay_server.app import build_app
from relay_server.config import ServerConfig
from relay_server.openapi import INGEST_METHODS, document
from relay_server.state import RelayState
from relay_server.store.sqlite import SQLiteStore
from tests.support.api import api_request

def registered_operations(tmp_path) -> set[tuple[str, str]]:
    """Return (path template, lowercase method) for every route of the relay app, with `*` spelled out.

    aiohttp adds a HEAD route beside every GET route; the GET operation covers it.
    """
    app = build_app(RelayState(config=ServerConfig(data_dir=tmp_path), store=SQLiteStore(tmp_path)))
    routes = [(route.resource.canonical, route.method) for route in app.router.routes()]
    with_get = {path for path, method in routes if method == "GET"}
    operations = set()
    for path, method in routes:
        if method == "*":
            operations.update((path, name) for name in INGEST_METHODS)
        elif not (method == "HEAD" and path in with_get):
            operations.add((path, method.lower()))
    return operations


def documented_operations() -> set[tuple[str, str]]:
    return {(path, method) for path, item in document("").get("paths").items() for method in item}


def test_document_is_valid_openapi():
    """The document passes the OpenAPI 3.1 specification validator."""
    validate(document("http://127.0.0.1:8787"))


def test_every_route_described(tmp_path):
    """Every route the relay registers has an operation in the document."""
    missing = registered_operations(tmp_path) - documented_operations()

    assert not missing, f"routes missing from relay_server/openapi.py: {sorted(missing)}"


def test_no_operation_without_route(tmp_path):
    """The document describes no operation that the relay lacks."""
    stale = documented_operations() - registered_operations(tmp_path)

    assert not stale, f"operations in relay_server/openapi.py with no route: {sorted(stale)}"


def test_operation_ids_unique():
    """Every operation has its own operationId, as code generators need."""
    ids = [operation["operationId"] for item in document("")["paths"].values() for operation in item.values()]

    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", ["/api/openapi.json"])
async def test_served_with_relay_url(path, shared_relay):
    """The relay serves the document with its own URL as the server."""
    answer = await api_request(shared_relay.url, "GET", path)

    assert answer.status == 200, answer.describe()
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.body["openapi"] == "3.1.0"
    assert answer.body["servers"] == [{"url": shared_relay.url}]
    assert answer.body["paths"] == document(shared_relay.url)["paths"]
