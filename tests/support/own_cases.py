"""Webhook requests that a faithful relay must carry unchanged, written for this test suite.

Each case is a request that relays and tunnels commonly alter: bodies that
are re-encoded, decompressed or replaced, queries and paths that are
re-encoded, headers that are dropped, merged, re-cased or invented. The
listener forwards to `127.0.0.1:PORT` without a base path, so the target
must see the same method, path and query as the sender used.
"""

import gzip
import json

from .cases import TARGET_AUTHORITY, SignatureCheck, WebhookCase, WebhookRequest, expectation_for
from .signatures import sign_github, sign_shopify, sign_slack, sign_standard_webhooks, sign_stripe

GITHUB_SECRET = "hookrelay-tests-github-secret"
STRIPE_SECRET = "whsec_hookrelay_tests_stripe"
SLACK_SECRET = "hookrelay-tests-slack-secret"
SHOPIFY_SECRET = "hookrelay-tests-shopify-secret"
STANDARD_WEBHOOKS_SECRET = "whsec_aG9va3JlbGF5LXRlc3RzLXN0YW5kYXJkLWtleQ=="

BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)


def _case(
    case_id: str,
    method: str,
    path: str,
    headers: list[tuple[str, str | bytes]],
    body: bytes = b"",
    *,
    query: str = "",
    chunked: bool = False,
    **expected,
) -> WebhookCase:
    request = WebhookRequest(
        method=method, path=path, query=query, headers=tuple(headers), body=body, chunked=chunked
    )
    return WebhookCase(id=case_id, request=request, expect=expectation_for(request, **expected))


def _pretty_json_github() -> WebhookCase:
    document = {
        "action": "opened",
        "issue": {"number": 42, "title": "Café menu — 50 % off", "labels": [], "assignee": None},
        "repository": {"full_name": "example-org/example-repo", "private": False},
    }
    # Two-space indent, raw UTF-8 and no trailing newline: parsing and dumping again compacts it.
    body = json.dumps(document, indent=2, ensure_ascii=False).encode()
    return _case(
        "pretty-json-github-hmac",
        "POST",
        "/github/webhook",
        [
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/5f3a9c1"),
            ("X-GitHub-Event", "issues"),
            ("X-GitHub-Delivery", "0b9e4c2a-0000-4000-8000-00000000a001"),
            ("X-Hub-Signature-256", sign_github(GITHUB_SECRET, body)),
        ],
        body,
        signature=SignatureCheck("github-sha256", "X-Hub-Signature-256", GITHUB_SECRET),
    )


def _json_escapes_stripe() -> WebhookCase:
    # Escapes that a decode and re-encode would rewrite: \u00e9, \/, a surrogate pair, \u003c.
    body = (
        rb'{"id":"evt_own_0002","type":"charge.succeeded","data":{"description":"caf\u00e9 \/ '
        rb'\ud83d\ude80 \u003cb\u003e \"quoted\" back\\slash","amount":1999}}'
    )
    return _case(
        "json-escapes-stripe-signature",
        "POST",
        "/stripe",
        [
            ("Content-Type", "application/json; charset=utf-8"),
            ("User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)"),
            ("Stripe-Signature", sign_stripe(STRIPE_SECRET, body, 1700000200)),
        ],
        body,
        signature=SignatureCheck("stripe-v1", "Stripe-Signature", STRIPE_SECRET),
    )


def _form_slack() -> WebhookCase:
    body = (
        b"token=placeholder&team_id=T0001&command=%2Fdeploy"
        b"&text=api+%2A%26+worker%3D2+%E2%9C%93&user_name=example.user&trigger_id=1.2.abc"
    )
    timestamp = "1700000300"
    return _case(
        "form-urlencoded-slack-signature",
        "POST",
        "/slack/commands",
        [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("User-Agent", "Slackbot 1.0 (+https://api.slack.com/robots)"),
            ("X-Slack-Request-Timestamp", timestamp),
            ("X-Slack-Signature", sign_slack(SLACK_SECRET, body, timestamp)),
        ],
        body,
        signature=SignatureCheck(
            "slack-v0", "X-Slack-Signature", SLACK_SECRET, timestamp_header="X-Slack-Request-Timestamp"
        ),
    )


def _shopify() -> WebhookCase:
    body = b'{"id":820982911946154508,"email":"jon@example.test","total_price":"19.99"}'
    return _case(
        "shopify-base64-hmac",
        "POST",
        "/shopify/orders",
        [
            ("Content-Type", "application/json"),
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Hmac-Sha256", sign_shopify(SHOPIFY_SECRET, body)),
            ("X-Shopify-Shop-Domain", "example.myshopify.com"),
        ],
        body,
        signature=SignatureCheck("shopify-base64", "X-Shopify-Hmac-Sha256", SHOPIFY_SECRET),
    )


def _standard_webhooks() -> WebhookCase:
    body = b'{"type":"invoice.paid","timestamp":"2024-01-01T00:00:00Z","data":{"id":"inv_1"}}'
    message_id, timestamp = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "1700000400"
    return _case(
        "standard-webhooks-signature",
        "POST",
        "/standard",
        [
            ("Content-Type", "application/json"),
            ("webhook-id", message_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", sign_standard_webhooks(STANDARD_WEBHOOKS_SECRET, body, message_id, timestamp)),
        ],
        body,
        header_names_exact=("webhook-id", "webhook-timestamp", "webhook-signature"),
        signature=SignatureCheck(
            "standard-webhooks",
            "webhook-signature",
            STANDARD_WEBHOOKS_SECRET,
            timestamp_header="webhook-timestamp",
            id_header="webhook-id",
        ),
    )


def _large_body(size: int) -> bytes:
    """Return a JSON document of exactly `size` bytes."""
    prefix, suffix = b'{"blob":"', b'"}'
    filler = b"0123456789abcdef" * (size // 16 + 1)
    return prefix + filler[: size - len(prefix) - len(suffix)] + suffix


def _bodies() -> list[WebhookCase]:
    return [
        _case(
            "binary-all-byte-values",
            "POST",
            "/binary",
            [("Content-Type", "application/octet-stream"), ("X-Request-Id", "own-binary")],
            b"\x00" + bytes(range(256)) + b"\r\n\x1a\x00END",
        ),
        _case(
            "gzip-body-kept-compressed",
            "POST",
            "/ingest",
            [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            gzip.compress(b'{"events":[' + b'{"name":"page_view","n":1},' * 40 + b'{"n":0}]}', mtime=0),
        ),
        _case(
            "body-160-kb",
            "POST",
            "/github",
            [("Content-Type", "application/json"), ("X-GitHub-Event", "push")],
            _large_body(160 * 1024),
        ),
        _case(
            "body-5-mib",
            "POST",
            "/bulk",
            [("Content-Type", "application/json")],
            _large_body(5 * 1024 * 1024),
        ),
        _case(
            "non-utf8-and-nul-bytes",
            "POST",
            "/raw",
            [("Content-Type", "text/plain; charset=utf-8")],
            b"NUL:\x00: latin1:caf\xe9 bad:\xc3\x28 overlong:\xc0\xaf surrogate:\xed\xa0\x80 bom:\xff\xfe end\r\n",
        ),
        _case(
            "empty-body-no-invented-content-type",
            "POST",
            "/empty",
            [("Content-Length", "0"), ("X-Event", "ping")],
            headers_absent=("Content-Type", "Transfer-Encoding"),
        ),
        _case(
            "invalid-json-accepted",
            "POST",
            "/bad-json",
            [("Content-Type", "application/json")],
            b'{"truncated": [1, 2, ',
        ),
        _case(
            "chunked-sender",
            "POST",
            "/chunked",
            [("Content-Type", "application/json"), ("X-Sender", "chunked")],
            _large_body(70_000),
            chunked=True,
        ),
    ]


def _methods_and_targets() -> list[WebhookCase]:
    no_body = {
        "headers_absent": ("Content-Type", "Transfer-Encoding"),
    }
    return [
        _case(
            "query-with-at-colon-ampersand",
            "POST",
            "/git/notifyCommit",
            [("Content-Type", "application/json")],
            b'{"ref":"refs/heads/main"}',
            query="url=git@git.example.test:group/repo.git&token=abc123&empty=&flag&task=a:b",
        ),
        _case("put-with-body", "PUT", "/resources/obj_1", [("Content-Type", "application/json"), ("If-Match", '"v3"')], b'{"state":"updated"}'),
        _case(
            "patch-with-body",
            "PATCH",
            "/resources/obj_2",
            [("Content-Type", "application/json-patch+json")],
            b'[{"op":"replace","path":"/state","value":"done"}]',
        ),
        _case("delete-without-body", "DELETE", "/resources/obj_3", [("X-Reason", "cleanup")], **no_body),
        _case(
            "get-with-query-no-body",
            "GET",
            "/verify",
            [("Accept", "*/*")],
            query="hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=example-token",
            **no_body,
        ),
        _case(
            "percent-encoded-path-kept-raw",
            "POST",
            "/files/a%2Fb/%7Euser/%zz/x%20y",
            [("Content-Type", "text/plain")],
            b"path test",
            query="q=%2F%7E%zz&sp=a+b",
        ),
        _case("trailing-slash-kept", "POST", "/jenkins/github-webhook/", [("Content-Type", "application/json")], b"{}"),
        _case("bare-channel-url", "POST", "", [("Content-Type", "application/json")], b'{"bare":true}', expected_path="/"),
        _case(
            "host-replaced-forwarded-host",
            "POST",
            "/vhost",
            [("Host", "hooks.example.test"), ("Content-Type", "application/json")],
            b'{"ping":true}',
            headers_present=(("Host", TARGET_AUTHORITY), ("X-Forwarded-Host", "hooks.example.test")),
        ),
    ]


def _headers() -> list[WebhookCase]:
    return [
        _case(
            "browser-user-agent-relayed",
            "POST",
            "/ipn",
            [
                ("User-Agent", BROWSER_USER_AGENT),
                ("Accept", "text/html,application/xhtml+xml"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            b"txn_id=0030&payment_status=Completed",
        ),
        _case(
            "repeated-headers-in-order",
            "POST",
            "/repeats",
            [
                ("X-Trace", "first"),
                ("Content-Type", "application/json"),
                ("X-Trace", "second"),
                ("X-Tag", "a"),
                ("X-Trace", "third, with comma"),
                ("X-Tag", "b"),
            ],
            b"{}",
        ),
        _case(
            "header-name-spelling-kept",
            "POST",
            "/spelling",
            [
                ("X-GitHub-Event", "ping"),
                ("x-lower-case-name", "lower"),
                ("X-UPPER-CASE-NAME", "upper"),
                ("X-Mixed-CaSe", "mixed"),
                ("Content-Type", "application/json"),
            ],
            b"{}",
            header_names_exact=("X-GitHub-Event", "x-lower-case-name", "X-UPPER-CASE-NAME", "X-Mixed-CaSe"),
        ),
        _case(
            "repeated-header-in-several-spellings",
            "POST",
            "/spellings",
            [
                ("X-Test", "one"),
                ("Content-Type", "application/json"),
                ("x-test", "two"),
                ("X-TEST", "three"),
                ("x-test", "four"),
            ],
            b"{}",
            header_names_exact=("X-Test", "x-test", "X-TEST"),
        ),
        _case(
            "header-value-latin1-byte",
            "POST",
            "/latin1",
            [("X-Customer-Name", b"Caf\xe9 M\xfcller"), ("Content-Type", "text/plain")],
            b"obs-text in a header value",
        ),
        _case(
            "long-header-value",
            "POST",
            "/long-header",
            [("X-Long-Signature", "s" * 6000), ("Content-Type", "text/plain")],
            b"long header",
        ),
        _case(
            "header-value-spaces-kept",
            "POST",
            "/spaces",
            [("X-Spaced", "a  b\tc"), ("X-Empty", ""), ("Content-Type", "text/plain")],
            b"spaces",
        ),
    ]


def own_cases() -> list[WebhookCase]:
    """Return every case of this module."""
    return [
        _pretty_json_github(),
        _json_escapes_stripe(),
        _form_slack(),
        _shopify(),
        _standard_webhooks(),
        *_bodies(),
        *_methods_and_targets(),
        *_headers(),
    ]
