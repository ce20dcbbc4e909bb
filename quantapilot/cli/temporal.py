"""``qp temporal``: prepare a Temporal cluster for QuantaPilot (custom search attributes).

``qp up`` registers the search attributes on the local dev server with start-up flags; a real cluster learns them
once, through the operator service, with ``qp temporal setup``. Running it again changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import click
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from quantapilot.settings import Settings
from quantapilot.temporal import connect, exit_without_teardown
from quantapilot.temporal_dev import SearchAttributeType, load_dev_config

# temporal-dev.yaml spells the types as the CLI does; the operator service wants the enum.
INDEXED_VALUE_TYPES: dict[SearchAttributeType, IndexedValueType.ValueType] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


class SearchAttributeConflictError(Exception):
    """A search attribute exists on the cluster with another type than ours (an operator must resolve it)."""


@dataclass
class SetupResult:
    """What :func:`ensure_search_attributes` did."""

    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


async def _custom_attributes(client: Client, namespace: str) -> dict[str, IndexedValueType.ValueType]:
    resp = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    return dict(resp.custom_attributes)


async def ensure_search_attributes(
    client: Client,
    *,
    namespace: str,
    attributes: dict[str, SearchAttributeType],
) -> SetupResult:
    """Register the custom search attributes that are missing on the cluster; existing ones are left alone.

    Args:
        client: A client connected to the cluster.
        namespace: Namespace the attributes are for.
        attributes: Name -> type, as in temporal-dev.yaml.

    Returns:
        Which attributes were added and which already existed.

    Raises:
        SearchAttributeConflictError: An attribute exists with a different type.
    """
    wanted = {name: INDEXED_VALUE_TYPES[kind] for name, kind in attributes.items()}
    current = await _custom_attributes(client, namespace)
    conflicts = [
        f"{name} is {IndexedValueType.Name(current[name])}, want {IndexedValueType.Name(kind)}"
        for name, kind in wanted.items()
        if name in current and current[name] != kind
    ]
    if conflicts:
        raise SearchAttributeConflictError("; ".join(conflicts))
    result = SetupResult(existing=sorted(name for name in wanted if name in current))
    missing = {name: kind for name, kind in wanted.items() if name not in current}
    if not missing:
        return result
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as err:
        # Another `qp temporal setup` may have added some meanwhile: what counts is what the cluster has now.
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
        after = await _custom_attributes(client, namespace)
        result.existing = sorted(name for name in wanted if name in current or name not in missing)
        result.added = sorted(name for name in missing if name in after)
        return result
    result.added = sorted(missing)
    return result


@click.group()
def temporal() -> None:
    """Prepare a Temporal cluster (or the dev server) for QuantaPilot."""


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why a TCP connection to ``host:port`` fails, or None when it opens."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s):
            return None
    except ValueError:
        return "the address is not host:port"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@temporal.command("setup")
@click.option("--address", default=None, help="host:port of the Temporal frontend (default: QP_TEMPORAL_ADDRESS).")
@click.option("--namespace", default=None, help="Namespace (default: QP_TEMPORAL_NAMESPACE).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File that lists the search attributes (default: the project's temporal-dev.yaml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def setup(address: str | None, namespace: str | None, config_path: Path | None, as_json: bool) -> None:
    """Register QuantaPilot's custom search attributes; attributes that already exist are fine.

    TLS client certificates or the API key come from the usual QP_TEMPORAL_* settings.
    """
    try:
        _setup(address, namespace, config_path, as_json)
    except click.ClickException as exc:
        exc.show()
        exit_without_teardown(exc.exit_code)
    exit_without_teardown(0)


def _setup(address: str | None, namespace: str | None, config_path: Path | None, as_json: bool) -> None:
    settings = Settings()
    updates = {k: v for k, v in (("temporal_address", address), ("temporal_namespace", namespace)) if v}
    settings = settings.model_copy(update=updates)
    attributes = load_dev_config(config_path).search_attributes

    async def _run() -> SetupResult:
        client = await connect(settings)
        return await ensure_search_attributes(client, namespace=settings.temporal_namespace, attributes=attributes)

    problem = _unreachable(settings.temporal_address)
    if problem:
        # Checked before the SDK starts its runtime: a failed connect left that runtime's threads to a racy
        # teardown at interpreter exit (seen as a crash under load), and this answers faster too.
        raise click.ClickException(f"cannot connect to Temporal at {settings.temporal_address}: {problem}")
    try:
        result = asyncio.run(_run())
    except SearchAttributeConflictError as exc:
        raise click.ClickException(f"search attribute type conflict: {exc}") from None
    except RPCError as exc:
        raise click.ClickException(f"Temporal refused the request ({exc.status.name}): {exc.message}") from None
    except RuntimeError as exc:  # the SDK reports an unreachable frontend as a RuntimeError at connect
        raise click.ClickException(f"cannot connect to Temporal at {settings.temporal_address}: {exc}") from None
    if as_json:
        click.echo(
            json.dumps({"namespace": settings.temporal_namespace, "added": result.added, "existing": result.existing})
        )
        return
    click.echo(f"namespace {settings.temporal_namespace} at {settings.temporal_address}")
    for name in result.added:
        click.echo(f"  added    {name} ({attributes[name]})")
    for name in result.existing:
        click.echo(f"  existing {name} ({attributes[name]})")
