"""URLs with pathological hosts are 4xx with the envelope, never a 5xx: every URL parser and resolver failure
is the caller's mistake. Each host below once answered 500 on a webhook endpoint (found by schemathesis run with
another seed and more examples than the suite's own fuzz test), or is of the same kind.
"""

from __future__ import annotations

from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope

PATHOLOGICAL_HOSTS = [
    "a..b",  # empty label: the IDNA codec inside getaddrinfo raised UnicodeError
    ".leading.dot",
    "a" * 64 + ".example",  # label over 63 characters
    ".".join(["a" * 60] * 5),  # name over 253 characters
    "xn--zz",  # punycode that does not decode: yarl raised UnicodeError reading the host
    "xn--a.example",
    "xn--",
    "%zz",
    "a%00b",
    "a!b.example",
    "[::1%zz]",  # zone id on a non-link-local address
    "[::1%25eth0]",
    "[zz::1]",
    "[v1.x]",
    "example.com:99999",
    "example.com:0",
    "example.com:-1",
    "[::1]:70000",
]


async def test_urls_webhook_endpoints_refuse_pathological_hosts(make_api: ApiFactory, settings: Settings) -> None:
    # Loopback allowed, so the one good endpoint below needs no DNS; the hosts under test are refused before it.
    api = await make_api(settings.model_copy(update={"webhook_allow_private": True, "rate_limit_enabled": False}))
    code, endpoint = await api.post("/v1/webhooks/endpoints", {"url": "http://127.0.0.1:9/hook"})
    assert code == 201, endpoint
    for host in PATHOLOGICAL_HOSTS:
        url = f"http://{host}/hook"
        code, body = await api.post("/v1/webhooks/endpoints", {"url": url})
        assert code == 422, (url, code, body)
        assert_envelope(body, "VALIDATION_ERROR")
        resp = await api.client.patch(
            f"/v1/webhooks/endpoints/{endpoint['id']}", json={"url": url}, headers=api.headers()
        )
        patched = await resp.json()
        assert resp.status == 422, (url, resp.status, patched)
        assert_envelope(patched, "VALIDATION_ERROR")
    code, kept = await api.get(f"/v1/webhooks/endpoints/{endpoint['id']}")
    assert code == 200 and kept["url"] == "http://127.0.0.1:9/hook", kept


async def test_urls_run_triggers_with_pathological_hosts_are_never_5xx(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(settings.model_copy(update={"rate_limit_enabled": False}))
    for host in PATHOLOGICAL_HOSTS:
        for url in (f"https://{host}/org/repo.git", f"ssh://git@{host}/org/repo.git", f"git@{host}:org/repo.git"):
            code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
            # Accepted (the worker refuses the host when the run starts) or refused now: never a 5xx.
            assert code in (202, 422), (url, code, body)
            if code == 422:
                assert_envelope(body, "VALIDATION_ERROR")
