"""The served contract, byte for byte: ``GET /v1/openapi.json`` and ``GET /v1/docs/api`` against golden copies.

The goldens are what the API served before the endpoint registry replaced the hand-written operation list; any
change to the published contract shows up here as a diff to review. To accept a deliberate change, run this module
with ``QP_UPDATE_GOLDEN=1`` and commit the rewritten files with the change that explains them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import Api

HERE = Path(__file__).resolve().parent
GOLDENS = {
    "/v1/openapi.json": HERE / "openapi.golden.json",
    "/v1/docs/api": HERE / "api_page.golden.html",
}


@pytest.mark.parametrize("path", sorted(GOLDENS))
async def test_served_contract_is_the_golden_copy(api: Api, path: str) -> None:
    resp = await api.client.get(path)
    assert resp.status == 200
    served = await resp.read()
    golden = GOLDENS[path]
    if os.environ.get("QP_UPDATE_GOLDEN") == "1":
        golden.write_bytes(served)
        pytest.skip(f"rewrote {golden.name}")
    expected = golden.read_bytes()
    assert served == expected, f"{path} differs from {golden.name} (QP_UPDATE_GOLDEN=1 rewrites it)"
