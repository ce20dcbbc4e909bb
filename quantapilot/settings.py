"""One settings class for every process (API, worker, CLI), read from ``QP_*`` environment variables."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from quantapilot.llm.prices import ModelPrice
from quantapilot.repos.config import BudgetsConfig, ModelsConfig, TokenLimitsConfig

DEFAULT_STATE_DIR = Path(".qp")


class Settings(BaseSettings):
    """Service settings.

    Every field can be set through an environment variable named ``QP_<FIELD>`` (for lists, a JSON array).
    Values are validated at start so a typo fails loudly instead of at the first request.
    """

    # hide_input_in_errors: a validation error must not echo the input, which holds the keys and tokens below.
    model_config = SettingsConfigDict(env_prefix="QP_", env_file=None, extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "test", "production"] = "development"

    # Logs and metrics
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    # Prometheus endpoints of the worker process: our metrics, and the Temporal SDK's (off when unset).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    temporal_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # OpenTelemetry traces over OTLP/HTTP (quantapilot/tracing.py): off unless this is true or the standard
    # OTEL_TRACES_EXPORTER=otlp / OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables ask for it; where spans go and
    # how is the exporter's own OTEL_EXPORTER_OTLP_* configuration.
    tracing: bool = False

    # Temporal
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "quantapilot"
    # Workflows a worker keeps in memory between tasks (sticky cache). Past this the least recently used are
    # evicted and replayed from history when they next get a task: it bounds the worker's memory however many
    # runs wait at gates (bench/capacity.py measures the trade-off).
    worker_max_cached_workflows: int = Field(default=2000, ge=0)
    # Activities one worker process runs at once (Temporal's own default is 100). They share the process, and its
    # GIL, with the workflow activations: a worker saturated with activities answered workflow tasks late (past
    # the 10 s task timeout under bench/capacity.py at 10,000 runs), so lowering this leaves the excess queued at
    # the server, where another worker can take it, instead of slowing every run in this one.
    worker_max_concurrent_activities: int = Field(default=100, ge=1, le=10_000)
    # On shutdown (SIGTERM) running activities get this long to finish before they are cancelled: an activity cut
    # off mid-way is retried elsewhere, but one that finishes also returns its database connection before the
    # worker closes the pool.
    worker_graceful_shutdown_s: float = Field(default=10.0, ge=0, le=3600)
    # Runs this worker starts carry their events on their activities (the events-carried patch). A worker of a
    # release before it would run such an activity without recording what it carries: while one may still poll
    # the task queue (a rolling deploy from such a release), start the new workers with this off, then on.
    # Runs already under the patch go on carrying either way (their history says so).
    worker_event_carry: bool = True
    # How long a query waits for a worker to answer (updates: three times this) before the API answers 503.
    temporal_rpc_timeout_s: float = Field(default=10.0, gt=0)
    temporal_api_key: str | None = Field(default=None, repr=False)
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None

    # Persistence
    state_dir: Path = DEFAULT_STATE_DIR
    database_url: str = ""
    # Migrate the schema at process start (development); in production run `qp db upgrade` and set this false.
    db_auto_migrate: bool = True
    # PostgreSQL cancels a statement of the API or the worker after this many seconds (0: never): below the
    # activities' start-to-close timeouts (30 s for an event, 120 s for a lifecycle step), so a retried activity
    # never leaves its abandoned query running in the database.
    db_statement_timeout_s: float = Field(default=20.0, ge=0, lt=120)

    # API server
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    public_base_url: str = ""
    run_path: str = "/run"
    max_body_bytes: int = 1024 * 1024
    token_cache_seconds: float = 5.0
    # A new connection must send a complete request head within this many seconds (and an idle keep-alive
    # connection is closed after it): aiohttp's keep-alive timer, which also cuts off slowloris clients.
    http_keepalive_s: float = Field(default=75.0, gt=0)
    # A request body must arrive completely within this many seconds, else 408 and the connection closes.
    http_body_timeout_s: float = Field(default=30.0, gt=0)

    # Rate limits per token and route class (docs/SECURITY.md); each API process enforces rate/api_processes,
    # unless the counters are shared through Redis (below).
    rate_limit_enabled: bool = True
    # Where the rate-limit counters live: unset, in each API process's memory; a Redis URL (redis://host:6379/0,
    # rediss://... for TLS) shares them between every API process using it, which then enforce the whole rate.
    # Unreachable Redis: requests are admitted (fail open), with a warning per outage (docs/DEPLOY.md).
    rate_limit_storage_uri: str | None = Field(default=None, repr=False)
    # Prefix of the counters' keys in that Redis: one per deployment sharing a Redis server.
    rate_limit_key_prefix: str = Field(default="qp_rate", min_length=1)
    api_processes: int = Field(default=1, ge=1)
    rate_reads_per_s: float = Field(default=50.0, gt=0)
    rate_reads_burst: int = Field(default=100, ge=1)
    rate_triggers_per_s: float = Field(default=20.0, gt=0)
    rate_triggers_burst: int = Field(default=40, ge=1)
    rate_telemetry_per_s: float = Field(default=20.0, gt=0)
    rate_telemetry_burst: int = Field(default=40, ge=1)
    rate_control_per_s: float = Field(default=20.0, gt=0)
    rate_control_burst: int = Field(default=40, ge=1)

    # Repository runs
    workdir: Path | None = None
    # fnmatch patterns a repo_url must match. file:// and bare paths are refused unless a pattern admits them.
    allowed_repo_patterns: list[str] = ["https://*", "ssh://*", "git@*:*"]
    # Repositories whose quantapilot.yml commands may be executed (fnmatch patterns); empty: none.
    command_repo_patterns: list[str] = []
    # Milestone commands run in a bubblewrap sandbox (quantapilot/sandbox.py, docs/SECURITY.md). "none" runs them
    # as plain child processes of the worker: an explicit opt-out the worker logs loudly at start.
    command_sandbox: Literal["bwrap", "none"] = "bwrap"
    # The bubblewrap executable: a name looked up on PATH, or a path.
    command_sandbox_bwrap: str = "bwrap"
    # Repositories whose commands get the host's network (fnmatch patterns; docs/SECURITY.md says what that
    # shares); empty: no command has a network.
    command_network_repo_patterns: list[str] = []
    # When the worker runs as root, commands run as this uid and gid (the kernel exempts uid 0 from the process
    # limit, and repository code should not run as root); pick one no other service uses.
    command_sandbox_uid: int = Field(default=65534, ge=1, lt=2**32 - 1)
    # Limits of each command: processes of the sandbox, bytes per written file, writable memory per process,
    # and the size of each of the private /tmp and /dev/shm (tmpfs, held in memory).
    command_max_processes: int = Field(default=256, ge=8)
    command_max_file_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    command_max_memory_bytes: int = Field(default=4 * 1024**3, ge=32 * 1024**2)
    command_tmp_bytes: int = Field(default=512 * 1024**2, ge=1024**2)
    # Extra host paths the sandbox sees read-only (a toolchain under /opt, /etc/java-17-openjdk, ...).
    command_sandbox_ro_binds: list[Path] = []
    # Repository runs continue as new after this many milestones per execution (unset: when Temporal suggests).
    continue_as_new_every_milestones: int | None = Field(default=None, ge=1)
    # Whether the token that triggered a run may decide its gates when quantapilot.yml does not say.
    allow_self_approval: bool = False
    git_author_name: str = "QuantaPilot"
    git_author_email: str = "quantapilot@localhost"
    clone_timeout_s: float = 300.0
    # Commits of history a run clones (shallow by default: documentation and merges need only the tip; git fetches
    # what a merge needs later). 0 clones the whole history.
    clone_depth: int = Field(default=1, ge=0)
    # Largest file of a repository read as data (quantapilot.yml aside: README, guides, package metadata, Python
    # sources); a larger one is listed on the index page but never read (quantapilot/repos/files.py).
    repo_max_file_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Each worker removes the worktrees of closed runs this often (and at start): runs that ended on another
    # worker, were terminated, or whose cleanup step failed. 0 turns the sweep off.
    worktree_sweep_interval_s: float = Field(default=600.0, ge=0)
    # Repository hosts whose addresses are loopback, private, link-local or otherwise not public are refused unless
    # this is on (a self-hosted Gitea on the private network); cloud metadata addresses stay refused even then.
    # Off in every environment (`qp up` too): it is separate from webhook_allow_private on purpose.
    repo_allow_private: bool = False
    # A clone (pack and checkout) or fetch that makes the run's repository larger than this is stopped and removed:
    # the run fails with REPO_TOO_LARGE.
    clone_max_bytes: int = Field(default=1024**3, ge=1)
    # Long steps heartbeat; a worker that dies mid-step is noticed after this many seconds.
    step_heartbeat_s: float = Field(default=30.0, gt=0, le=600)
    default_forge: Literal["git", "github", "gitea"] = "git"
    github_api_url: str = "https://api.github.com"
    github_token: str | None = Field(default=None, repr=False)
    gitea_api_url: str = ""
    gitea_token: str | None = Field(default=None, repr=False)

    # Secrets at rest (quantapilot/secretbox.py, docs/DEPLOY.md): webhook signing secrets are encrypted with this
    # key (32 bytes, base64 or hex), or the keys of the file (one a line, the first the primary); previous keys only
    # decrypt, during a rotation. Unset outside production: <state_dir>/secret.key, generated on first start.
    secret_key: str | None = Field(default=None, repr=False)
    secret_key_file: Path | None = None
    secret_previous_keys: list[str] = Field(default_factory=list, repr=False)

    # Unauthenticated requests (no valid token; public endpoints) are limited per client address. The address is
    # the TCP peer; X-Forwarded-For is read only when the peer is one of these proxies (IPs or CIDRs).
    rate_unauthenticated_per_s: float = Field(default=5.0, gt=0)
    rate_unauthenticated_burst: int = Field(default=20, ge=1)
    trusted_proxies: list[str] = []

    # /metrics: on its own listener (QP_METRICS_PORT, on QP_METRICS_HOST) instead of the API port, and/or only with
    # `Authorization: Bearer <QP_METRICS_TOKEN>`. In production the API port serves /metrics only with the token.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_token: str | None = Field(default=None, repr=False)

    # Review links and pages (quantapilot/review, /ui/): the HMAC key of signed review links and of the /ui/ session
    # cookies (at least 32 characters). Unset outside production: <state_dir>/review-link.key, generated on first
    # use (`qp up` creates it); unset in production, review links and the /ui/ pages are off. Never in the database.
    review_link_key: str | None = Field(default=None, repr=False, min_length=32)
    # How long a review link is valid (QP_REVIEW_LINK_TTL, seconds; default 7 days), and a /ui/ sign-in.
    review_link_ttl: float = Field(default=7 * 86400.0, gt=0)
    ui_session_ttl_s: float = Field(default=8 * 3600.0, gt=0)

    # Events
    amqp_url: str | None = Field(default=None, repr=False)
    amqp_exchange: str = "quantapilot.events"
    webhook_allow_private: bool = False
    webhook_secret_overlap_hours: float = 24.0
    webhook_timeout_s: float = 10.0
    # Endpoints one workspace may hold: each matching endpoint costs a delivery per event.
    webhook_max_endpoints: int = Field(default=50, ge=1, le=10_000)
    # Multiplies every webhook retry delay (not Retry-After, not the 5-day disable threshold); tests use ~0.001.
    webhook_retry_scale: float = Field(default=1.0, gt=0, le=1.0)
    # How deliveries are made (quantapilot/webhooks/dispatcher.py): "outbox" drains the delivery rows in batches
    # from a dispatcher inside each worker; "workflow" starts one Temporal workflow per delivery (the old path).
    webhook_dispatch: Literal["outbox", "workflow"] = "outbox"
    # How long a dispatcher's claim on a delivery holds before another dispatcher may take it over (a worker
    # killed mid-batch). Renewed while the attempt runs; much longer than the HTTP timeout (checked below).
    webhook_claim_lease_s: float = Field(default=120.0, gt=0)
    # Attempts in flight at once towards one endpoint, and in one dispatcher overall.
    webhook_endpoint_concurrency: int = Field(default=4, ge=1, le=256)
    webhook_dispatch_inflight: int = Field(default=256, ge=1, le=10_000)

    # Models (quantapilot/llm/): the OpenAI-compatible Chat Completions service model steps
    # call, its key (never logged or shown), and the timeout of one call. QP_MODEL_PROVIDER picks another provider
    # registered as a `provider.<name>` entry point of the quantapilot.agents group.
    model_provider: str = Field(default="openai", min_length=1)
    model_base_url: str | None = None
    model_api_key: SecretStr | None = Field(default=None, repr=False)
    model_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    # Prices in USD per million input/output tokens, per model name (JSON), e.g.
    # {"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}. A run with budgets.usd whose models are
    # missing here is refused at start (CONFIG_INVALID): its cost is never guessed.
    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # What one model answer may change (a unified diff): bytes and files; larger answers fail the step.
    model_max_diff_bytes: int = Field(default=256 * 1024, ge=1024)
    model_max_diff_files: int = Field(default=50, ge=1)
    # Repository text put into a prompt: per file and in all (the model sees the files the milestone names).
    model_prompt_file_bytes: int = Field(default=32 * 1024, ge=1024)
    model_prompt_total_bytes: int = Field(default=128 * 1024, ge=4096)
    # Length of the "day" of limits.tokens_per_day (QP_MODEL_DAY_S): a UTC calendar day. Tests only shorten it
    # (to see a paused run resume at the next day); values below a day are refused outside environment=test.
    model_day_s: float = Field(default=86400.0, gt=0, le=86400.0)
    # Lifecycle runs have no quantapilot.yml: their models and budgets are set here, as JSON in the shape of
    # quantapilot.yml's `models` and `budgets` (docs/LIFECYCLE.md, "Narratives by a model"), e.g.
    # QP_LIFECYCLE_MODELS='{"arch": {"model": "gpt-4o-mini"}}' QP_LIFECYCLE_BUDGETS='{"tokens": 20000, "usd": 0.5}'.
    # With models.arch set, the stage agents' narrative fields (summary, reasoning, business case) are written by
    # that model; the arithmetic stays the agents'. A run takes them when it is triggered.
    lifecycle_models: ModelsConfig | None = None
    lifecycle_budgets: BudgetsConfig | None = None
    # The token limits of quantapilot.yml's `limits` for lifecycle runs, e.g. QP_LIFECYCLE_LIMITS=
    # '{"tokens_per_day": 200000}': tokens_per_day is checked against the workspace's model spending of the UTC
    # day (every run's calls, model_usage), as repository runs' limits.tokens_per_day is.
    lifecycle_limits: TokenLimitsConfig | None = None

    @model_validator(mode="after")
    def _fill_derived(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.state_dir / 'quantapilot.db').as_posix()}"
        if self.workdir is None:
            self.workdir = self.state_dir / "work"
        if not self.run_path.startswith("/"):
            raise ValueError("run_path must start with '/'")
        if self.model_day_s < 86400.0 and self.environment != "test":
            raise ValueError("QP_MODEL_DAY_S shortens the day of limits.tokens_per_day for tests only")
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            # One without the other would silently connect without the client certificate.
            raise ValueError("QP_TEMPORAL_TLS_CERT and QP_TEMPORAL_TLS_KEY go together: set both or neither")
        arch = self.lifecycle_models.arch if self.lifecycle_models else None
        budgets = self.lifecycle_budgets
        if budgets is not None and budgets.usd is not None and arch is not None and arch.model not in self.model_prices:
            # As for repository runs: a USD budget is never spent against a guessed price.
            raise ValueError(
                f"QP_LIFECYCLE_BUDGETS has usd but QP_MODEL_PRICES has no price for {arch.model} "
                "(add its price per million input and output tokens)"
            )
        if self.webhook_claim_lease_s < 3 * self.webhook_timeout_s:
            # A lease that can run out during one attempt lets a second dispatcher send the same delivery.
            raise ValueError("QP_WEBHOOK_CLAIM_LEASE_S must be at least 3 times QP_WEBHOOK_TIMEOUT_S")
        return self

    @cached_property
    def base_url(self) -> str:
        """Base URL clients use to reach the API (status URLs are built from it)."""
        return self.public_base_url.rstrip("/") or f"http://{self.api_host}:{self.api_port}"

    @property
    def run_workdir(self) -> Path:
        """Directory under which each run gets its own worktree."""
        assert self.workdir is not None  # filled by the validator
        return self.workdir
