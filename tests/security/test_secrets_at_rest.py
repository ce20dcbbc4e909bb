"""Webhook signing secrets at rest: a database dump alone signs nothing; key rotation; no start without a key.

Real API and worker, real deliveries to a loopback receiver, the database read with plain SQL as a thief would,
on SQLite and (``QP_TEST_DATABASE=postgres``) PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.client import Client

from quantapilot.db import session_scope
from quantapilot.secretbox import (
    KeyRing,
    SecretDecryptError,
    SecretKeyError,
    generate_key,
    key_id,
    load_keyring,
    parse_key,
)
from quantapilot.settings import Settings
from quantapilot.webhooks import sign, verify_signature
from quantapilot.webhooks.signing import standard_secret
from quantapilot.webhooks.signing_secrets import reveal_secret
from quantapilot.webhooks.tables import WebhookSecret
from tests.conftest import ApiFactory
from tests.drills.helpers import settings_env
from tests.support import Api, eventually
from tests.webhook_e2e.support import Receiver, all_status, create_endpoint, fast_run, wait_deliveries
from worker import build_worker

QP = str(Path(sys.executable).with_name("qp"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """The test's settings with loopback receivers allowed and fast webhook retries."""
    return settings.model_copy(
        update={"webhook_allow_private": True, "webhook_retry_scale": 0.0005, "webhook_timeout_s": 5.0}
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as rec:
        yield rec


def dump(engine: Engine) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table, each value as text: what a stolen backup holds."""
    tables = inspect(engine).get_table_names()
    with engine.connect() as conn:
        return {
            table: [tuple(str(v) for v in row) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]  # noqa: S608
            for table in tables
        }


def stored_secrets(engine: Engine, endpoint_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT secret FROM webhook_secrets WHERE endpoint_id = :e ORDER BY id"), {"e": endpoint_id}
        )
        return [row[0] for row in rows]


def qp_secrets(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QP, "secrets", *args], env=settings_env(settings), capture_output=True, text=True, timeout=60, check=False
    )


async def test_secrets_database_dump_cannot_sign_a_webhook(
    make_api: ApiFactory, client: Client, hook_settings: Settings, engine: Engine, receiver: Receiver
) -> None:
    async with build_worker(client, hook_settings):
        api = await make_api(hook_settings)
        endpoint = await create_endpoint(api, receiver.url(), events=["run.started"])
        other = await create_endpoint(api, receiver.url("/other"), events=["run.started"])
        secret = endpoint["secret"]
        await fast_run(api)
        await wait_deliveries(api, endpoint["id"], all_status("delivered", 1))
    (delivery,) = receiver.delivered("/hook")
    # The real receiver, holding the secret it was shown once, verifies the real delivery.
    assert delivery.verified(secret)

    # The thief's copy: every table, every column.
    rows = dump(engine)
    everything = json.dumps(rows)
    assert secret not in everything
    assert secret.removeprefix("whsec_") not in everything
    # Nor its Standard Webhooks form (derived in the answer, never stored).
    assert endpoint["standard_webhooks_secret"].removeprefix("whsec_") not in everything
    assert hook_settings.secret_key is not None
    key = parse_key(hook_settings.secret_key, source="test")
    assert hook_settings.secret_key not in everything and key.hex() not in everything
    (dumped,) = stored_secrets(engine, endpoint["id"])
    assert dumped.startswith(f"v1:{key_id(key)}:")

    # A receiver that only knows the dumped value rejects the real delivery ...
    assert not verify_signature(dumped, delivery.headers, delivery.body)
    assert delivery.verified_standard(endpoint["standard_webhooks_secret"])
    assert not delivery.verified_standard(standard_secret(dumped))
    # ... and a webhook the thief signs with it fails at the real receiver.
    forged = json.dumps({**delivery.event, "type": "run.completed"}).encode()
    header = sign([dumped], forged, timestamp=int(time.time()))
    assert not verify_signature(secret, {"X-VC-Signature": header}, forged)

    # Decrypting needs the key: another key opens nothing; the right key opens it for its own row only.
    with Session(engine) as session:
        stored = session.exec(select(WebhookSecret).where(WebhookSecret.endpoint_id == endpoint["id"])).one()
        with pytest.raises(SecretDecryptError):
            reveal_secret(stored, keyring=KeyRing([parse_key(generate_key(), source="test")]))
        assert reveal_secret(stored, keyring=load_keyring(hook_settings)) == secret
        # The ciphertext copied onto another endpoint's row does not open there (associated data).
        moved = stored.model_copy(update={"endpoint_id": other["id"]})
        with pytest.raises(SecretDecryptError):
            reveal_secret(moved, keyring=load_keyring(hook_settings))


async def test_secrets_key_rotation_reencrypts_and_overlap_keeps_verifying(
    make_api: ApiFactory, client: Client, hook_settings: Settings, engine: Engine, receiver: Receiver
) -> None:
    old_key, new_key = generate_key(), generate_key()
    before = hook_settings.model_copy(update={"secret_key": old_key})
    async with build_worker(client, before):
        api = await make_api(before)
        endpoint = await create_endpoint(api, receiver.url(), events=["run.started"])
        first_secret = endpoint["secret"]
        await fast_run(api, "before")
        [first] = await wait_deliveries(api, endpoint["id"], all_status("delivered", 1))
        # A webhook secret rotation: both secrets sign during the overlap.
        code, rotated = await api.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate-secret")
        assert code == 200, rotated
        second_secret = rotated["secret"]
    old_id, new_id = key_id(parse_key(old_key, source="t")), key_id(parse_key(new_key, source="t"))
    assert [KeyRing.key_id_of(v) for v in stored_secrets(engine, endpoint["id"])] == [old_id, old_id]

    # The operator makes the new key primary, keeps the old one to decrypt, and re-encrypts everything.
    during = hook_settings.model_copy(update={"secret_key": new_key, "secret_previous_keys": [old_key]})
    rotated_out = qp_secrets(during, "rotate-key")
    assert rotated_out.returncode == 0, rotated_out.stderr
    assert f"key {new_id}: re-encrypted 2 secrets" in rotated_out.stdout
    assert new_key not in rotated_out.stdout + rotated_out.stderr
    assert old_key not in rotated_out.stdout + rotated_out.stderr
    assert [KeyRing.key_id_of(v) for v in stored_secrets(engine, endpoint["id"])] == [new_id, new_id]
    again = qp_secrets(during, "rotate-key")
    assert again.returncode == 0 and "re-encrypted 0 secrets" in again.stdout and "2 already under it" in again.stdout

    # The old key is retired: processes with only the new key sign with both webhook secrets (the overlap).
    after = hook_settings.model_copy(update={"secret_key": new_key})
    status = qp_secrets(after, "status")
    assert status.returncode == 0, status.stderr
    assert f"key {new_id} (primary): 2 secrets" in status.stdout
    async with build_worker(client, after):
        api = await make_api(after)
        await fast_run(api, "after")
        await wait_deliveries(api, endpoint["id"], all_status("delivered", 2))
        # The delivery made before the rotation is redelivered, signed under the re-encrypted secrets.
        code, body = await api.post(f"/v1/webhooks/deliveries/{first['id']}/redeliver")
        assert code == 202, body

        async def _count() -> int:
            return len(receiver.delivered())

        await eventually(_count, lambda n: n == 3, what="redelivery")
    before_rotation, after_run, redelivered = receiver.delivered()
    assert before_rotation.verified(first_secret)
    for request in (after_run, redelivered):
        assert request.verified(first_secret) and request.verified(second_secret)
    assert redelivered.event["id"] == before_rotation.event["id"]

    # A process that only has the retired key cannot read the secrets any more.
    with Session(engine) as session:
        stored = session.get(WebhookSecret, _first_row_id(engine, endpoint["id"]))
        assert stored is not None
        with pytest.raises(SecretDecryptError, match="not configured"):
            reveal_secret(stored, keyring=load_keyring(before))


def _first_row_id(engine: Engine, endpoint_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(text("SELECT min(id) FROM webhook_secrets WHERE endpoint_id = :e"), {"e": endpoint_id}).one()[
                0
            ]
        )


async def test_secrets_plaintext_rows_from_before_are_encrypted_at_start(
    make_api: ApiFactory, hook_settings: Settings, engine: Engine
) -> None:
    # A row as the previous version wrote it: the secret in plaintext.
    api: Api = await make_api(hook_settings)
    endpoint = await create_endpoint(api, "http://127.0.0.1:9/hook")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_secrets SET secret = :s WHERE endpoint_id = :e"),
            {"s": endpoint["secret"], "e": endpoint["id"]},
        )
    assert stored_secrets(engine, endpoint["id"]) == [endpoint["secret"]]
    await make_api(hook_settings)  # the next process start
    (stored,) = stored_secrets(engine, endpoint["id"])
    assert stored != endpoint["secret"] and KeyRing.key_id_of(stored) is not None
    assert KeyRing.key_id_of(stored) == load_keyring(hook_settings).primary_id
    with session_scope(engine) as session:
        row = session.get(WebhookSecret, _first_row_id(engine, endpoint["id"]))
        assert row is not None and reveal_secret(row, keyring=load_keyring(hook_settings)) == endpoint["secret"]


@pytest.mark.parametrize("module", ["api", "worker"])
def test_secrets_production_start_refuses_without_key(module: str, settings: Settings, tmp_path: Path) -> None:
    production = settings.model_copy(update={"environment": "production", "state_dir": tmp_path})
    env = {name: value for name, value in settings_env(production).items() if not name.startswith("QP_SECRET_")}
    started = subprocess.run(
        [sys.executable, "-m", module], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert started.returncode == 2, started.stderr
    assert "QP_SECRET_KEY or QP_SECRET_KEY_FILE is required in production" in started.stderr
    assert not (tmp_path / "secret.key").exists()  # no key was made up on the spot

    # A malformed key is refused too, without echoing it.
    malformed = "not-a-key-but-still-confidential"
    started = subprocess.run(
        [sys.executable, "-m", module],
        env={**env, "QP_SECRET_KEY": malformed},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 2, started.stderr
    assert "QP_SECRET_KEY is not a 32-byte key" in started.stderr
    assert malformed not in started.stdout + started.stderr


def test_secrets_key_never_in_repr_or_errors(tmp_path: Path) -> None:
    key, old, metrics = generate_key(), generate_key(), "metrics-token-value"
    # A validation error of another field does not echo the input, which holds every secret setting.
    with pytest.raises(ValueError) as caught:  # noqa: PT011 - the message is what is checked
        Settings(temporal_api_key=key, secret_key=key, temporal_tls_cert=tmp_path / "c.pem")
    message = str(caught.value)
    # pydantic would show the input shortened in the middle ("input_value={'temporal_api_key': 'AbC...}").
    assert "TLS" in message and "input_value" not in message and key not in message
    settings = Settings(
        state_dir=tmp_path, secret_key=key, secret_previous_keys=[old], metrics_token=metrics, environment="test"
    )
    for shown in (repr(settings), str(settings), repr(load_keyring(settings))):
        assert key not in shown and old not in shown and metrics not in shown
    with pytest.raises(SecretKeyError) as refused:
        parse_key(key[:-2] + "!!", source="QP_SECRET_KEY")
    assert key[:-2] not in str(refused.value)


def test_secrets_development_generates_owner_only_key_file_once(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", environment="development")
    first = load_keyring(settings)
    path = tmp_path / "state" / "secret.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_keyring(settings).primary_id == first.primary_id  # read back, not regenerated
    # A key file with a new primary and the old key on a later line decrypts both.
    old_line = next(line for line in path.read_text().splitlines() if not line.startswith("#"))
    rotated = tmp_path / "rotated.key"
    rotated.write_text(f"{generate_key()}\n{old_line}\n")
    ring = load_keyring(Settings(state_dir=tmp_path, secret_key_file=rotated, environment="production"))
    sealed = first.encrypt("whsec_x", context="c")
    assert ring.primary_id != first.primary_id and ring.decrypt(sealed, context="c") == "whsec_x"
