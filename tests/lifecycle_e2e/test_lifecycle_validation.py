"""Invalid lifecycle run requests answer 422 with the errors' paths, and start nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Api

ACCOUNT = "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"accountId": ACCOUNT}, ""),
        ({"stage": "renewal", "accountId": ACCOUNT}, "/stage"),
        ({"stage": "opportunity", "accountId": "1234"}, "/accountId"),
        ({"stage": "opportunity", "accountId": ACCOUNT, "extra": 1}, ""),
        ({"stage": "opportunity", "accountId": ACCOUNT, "inputs": {"benchmarks": [{"kpi": "x"}]}},
         "/inputs/benchmarks/0"),
        ({"stage": "realization", "accountId": ACCOUNT,
          "inputs": {"reportPeriod": {"from": "2025-11-17T00:00:00Z", "to": "2025-11-01T00:00:00Z"}}},
         "/inputs/reportPeriod"),
        ({"stage": "realization", "accountId": ACCOUNT,
          "inputs": {"reportPeriod": {"from": "2025-11-01", "to": "2025-11-17T00:00:00Z"}}},
         "/inputs/reportPeriod/from"),
        ({"stage": "target", "accountId": ACCOUNT, "inputs": {"kpis": [{"kpi": "x", "confidence": 2}]}},
         "/inputs/kpis/0/confidence"),
    ],
)  # fmt: skip
async def test_lifecycle_invalid_bodies_answer_422(api: Api, body: dict[str, Any], path: str) -> None:
    code, resp = await api.post("/v1/lifecycle/runs", body)
    assert code == 422, resp
    assert resp["error"]["code"] == "VALIDATION_ERROR" and resp["error"]["details"], resp
    assert any(d["path"].startswith(path) for d in resp["error"]["details"]), resp


async def test_lifecycle_nan_bad_json_and_scope(api: Api, make_lc_api: Any) -> None:
    raw = f'{{"stage": "opportunity", "accountId": "{ACCOUNT}", "inputs": {{"benchmarks": [{{"kpi": "x", "value": NaN}}]}}}}'
    r = await api.client.post("/v1/lifecycle/runs", data=raw, headers=api.headers({"Content-Type": "application/json"}))
    body = await r.json()
    assert r.status == 422 and body["error"]["details"][0]["path"] == "/inputs/benchmarks/0/value"
    r = await api.client.post("/v1/lifecycle/runs", data="{", headers=api.headers({"Content-Type": "application/json"}))
    assert r.status == 400
    code, resp = await api.post("/v1/lifecycle/runs", {"stage": "opportunity", "accountId": ACCOUNT},
                                headers={"Idempotency-Key": "bad key with spaces"})  # fmt: skip
    assert code == 400 and resp["error"]["code"] == "VALIDATION_ERROR"
    reader = await make_lc_api(scopes=("runs:read",))
    code, resp = await reader.post("/v1/lifecycle/runs", {"stage": "opportunity", "accountId": ACCOUNT})
    assert code == 403 and resp["error"]["code"] == "AUTHORIZATION_ERROR"
