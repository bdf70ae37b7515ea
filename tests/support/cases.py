"""Webhook cases: a request a sender posts and what the local target must receive.

The shared cases are read from `requests.json` in the project's shared
folder beside the repository. `load_shared_cases` turns each JSON object
into a `WebhookCase`, so the shared cases and the cases in
`own_cases.py` go through the same checks.
"""

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .http import HeaderValue

SHARED_DIR = Path(__file__).parents[2].parent / "shared"

# Stands for the target's host:port in expected header values.
TARGET_AUTHORITY = "${TARGET_AUTHORITY}"


@dataclass(frozen=True)
class SignatureCheck:
    """A provider signature to recompute at the target over the body it received."""

    scheme: str
    header: str
    secret: str
    timestamp_header: str | None = None
    id_header: str | None = None


@dataclass(frozen=True)
class WebhookRequest:
    """A request as the sender posts it. `path` is appended to the channel's public URL."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, HeaderValue], ...]
    body: bytes
    chunked: bool = False

    def header(self, name: str) -> HeaderValue | None:
        for header_name, value in self.headers:
            if header_name.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Expectation:
    """The request that the target must receive, with the field names of the shared case format.

    Header names compare case-insensitively. A regular expression passes
    when `re.search` finds it in the value.
    """

    method: str
    path: str
    query: str
    body_sha256: str
    body_length: int
    headers_present: tuple[tuple[str, HeaderValue], ...] = ()
    headers_absent: tuple[str, ...] = ()
    headers_match: tuple[tuple[str, str], ...] = ()
    headers_match_if_present: tuple[tuple[str, str], ...] = ()
    headers_must_not_match: tuple[tuple[str, str], ...] = ()
    header_names_exact: tuple[str, ...] = ()
    status_to_sender: str = "2xx"
    signature: SignatureCheck | None = None


@dataclass(frozen=True)
class WebhookCase:
    id: str
    request: WebhookRequest
    expect: Expectation
    note: str = field(default="", compare=False)


def _pairs(items: list | None) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in items or [])


def _body(request: dict) -> bytes:
    """Decode `body_b64`, or build the body from `body_gen`: prefix + unit * times + suffix."""
    generator = request.get("body_gen")
    if generator is None:
        return base64.b64decode(request.get("body_b64") or "")
    unit = base64.b64decode(generator["unit_b64"])
    return (
        base64.b64decode(generator.get("prefix_b64", ""))
        + unit * generator["times"]
        + base64.b64decode(generator.get("suffix_b64", ""))
    )


def _signature(check: dict | None) -> SignatureCheck | None:
    if check is None:
        return None
    return SignatureCheck(
        scheme=check["scheme"],
        header=check["header"],
        secret=check["secret"],
        timestamp_header=check.get("timestamp_header"),
        id_header=check.get("id_header"),
    )


def case_from_json(record: dict) -> WebhookCase:
    """Build a WebhookCase from one object of the shared `requests.json`."""
    request = record["request"]
    expect = record["expect"]
    return WebhookCase(
        id=record["id"],
        note=record.get("note", record.get("kind", "")),
        request=WebhookRequest(
            method=request["method"],
            path=request.get("path", ""),
            query=request.get("query", ""),
            headers=_pairs(request.get("headers")),
            body=_body(request),
            chunked=bool(request.get("send_chunked", False)),
        ),
        expect=Expectation(
            method=expect["method"],
            path=expect["path"],
            query=expect.get("query", ""),
            body_sha256=expect["body_sha256"],
            body_length=expect["body_length"],
            headers_present=_pairs(expect.get("headers_present")),
            headers_absent=tuple(expect.get("headers_absent") or ()),
            headers_match=_pairs(expect.get("headers_match")),
            headers_match_if_present=_pairs(expect.get("headers_match_if_present")),
            headers_must_not_match=_pairs(expect.get("headers_must_not_match")),
            header_names_exact=tuple(expect.get("header_names_exact") or ()),
            status_to_sender=expect.get("status_to_sender", "2xx"),
            signature=_signature(expect.get("signature_check")),
        ),
    )


def load_shared_cases() -> list[WebhookCase] | None:
    """Return the shared cases, or None when the shared folder has no `cases/requests.json`."""
    path = SHARED_DIR / "cases" / "requests.json"
    if not path.is_file():
        return None
    return [case_from_json(record) for record in json.loads(path.read_text(encoding="utf-8"))]


def expectation_for(
    request: WebhookRequest,
    *,
    expected_path: str | None = None,
    headers_present: tuple[tuple[str, HeaderValue], ...] = (),
    headers_absent: tuple[str, ...] = (),
    headers_match_if_present: tuple[tuple[str, str], ...] = (),
    header_names_exact: tuple[str, ...] = (),
    signature: SignatureCheck | None = None,
) -> Expectation:
    """Build the expectation of a request that must arrive unchanged.

    Method, query and body are those of the request, and the path is too
    unless `expected_path` is given. A non-chunked request with a body must arrive
    with its exact Content-Length.
    """
    if request.body and not request.chunked:
        headers_present = (*headers_present, ("Content-Length", str(len(request.body))))
    else:
        headers_match_if_present = (*headers_match_if_present, ("Content-Length", f"^{len(request.body)}$"))
    return Expectation(
        method=request.method,
        path=request.path if expected_path is None else expected_path,
        query=request.query,
        body_sha256=hashlib.sha256(request.body).hexdigest(),
        body_length=len(request.body),
        headers_present=headers_present,
        headers_absent=headers_absent,
        headers_match_if_present=headers_match_if_present,
        header_names_exact=header_names_exact,
        signature=signature,
    )
