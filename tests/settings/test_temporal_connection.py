"""The Temporal connection from settings: TLS and API key combinations, and where the SDK's metrics are served."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError
from temporalio.service import TLSConfig

from quantapilot.settings import Settings
from quantapilot.temporal import tls_config
from tests.drills.helpers import free_port, spawn, stop, until


def pem(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(f"-----BEGIN {name.upper()}-----\n".encode())
    return path


def test_tls_plaintext_mtls_api_key_and_ca(tmp_path: Path) -> None:
    cert, key, ca = pem(tmp_path, "cert"), pem(tmp_path, "key"), pem(tmp_path, "ca")
    assert tls_config(Settings()) is False  # the dev server speaks plaintext
    mtls = tls_config(Settings(temporal_tls_cert=cert, temporal_tls_key=key, temporal_tls_ca=ca))
    assert isinstance(mtls, TLSConfig)
    assert (mtls.client_cert, mtls.client_private_key, mtls.server_root_ca_cert) == (
        cert.read_bytes(),
        key.read_bytes(),
        ca.read_bytes(),
    )
    # Temporal Cloud with an API key: TLS with the system roots, or with the CA file when one is given.
    assert tls_config(Settings(temporal_api_key="k")) is True
    with_ca = tls_config(Settings(temporal_api_key="k", temporal_tls_ca=ca))
    assert isinstance(with_ca, TLSConfig) and with_ca.server_root_ca_cert == ca.read_bytes()
    assert with_ca.client_cert is None
    ca_only = tls_config(Settings(temporal_tls_ca=ca))
    assert isinstance(ca_only, TLSConfig) and ca_only.server_root_ca_cert == ca.read_bytes()


@pytest.mark.parametrize("field", ["temporal_tls_cert", "temporal_tls_key"])
def test_tls_certificate_and_key_go_together(tmp_path: Path, field: str) -> None:
    with pytest.raises(ValidationError, match="set both or neither"):
        Settings.model_validate({field: pem(tmp_path, "one")})


async def _metrics(session: aiohttp.ClientSession, port: int) -> str:
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text() if resp.status == 200 else ""
    except aiohttp.ClientError:
        return ""


@pytest.mark.slow
@pytest.mark.one_pass(
    "sqlite", why="which process binds which metrics port; the database is only in the settings both processes get"
)
async def test_worker_serves_its_own_and_the_sdk_metrics_and_the_api_does_not_claim_the_sdk_port(
    settings: Settings, tmp_path: Path
) -> None:
    worker_port, sdk_port, api_port = free_port(), free_port(), free_port()
    settings = settings.model_copy(
        update={"worker_metrics_port": worker_port, "temporal_metrics_port": sdk_port, "api_port": api_port}
    )
    log = tmp_path / "processes.log"
    worker = spawn("worker", settings, log)
    # The API gets the same settings, as on a host that runs both: it must not try to bind the SDK's port.
    api = spawn("api", settings, log)
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sdk = await until(lambda: _metrics(session, sdk_port), within=60, interval=0.5, what="SDK metrics")
            assert "temporal_" in sdk
            ours = await until(lambda: _metrics(session, worker_port), within=30, interval=0.5, what="worker metrics")
            assert "qp_runs_total" in ours or "qp_run_events_total" in ours, ours[:500]
            api_metrics = await until(lambda: _metrics(session, api_port), within=30, interval=0.5, what="API metrics")
            assert "qp_api_requests_total" in api_metrics
        assert worker.poll() is None and api.poll() is None, log.read_text()[-2000:]
    finally:
        stop(api)
        stop(worker)
