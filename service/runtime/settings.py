"""All configuration, read from the environment once at start-up and passed down."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PostgresDsn, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting is an environment variable of the same name in upper case."""

    # Errors never echo values: URLs carry passwords.
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    # Connections
    database_url: PostgresDsn = Field(
        default=PostgresDsn("postgresql://postgres@127.0.0.1:5432/images"),
        description="PostgreSQL connection URL",
    )
    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description=(
            "RabbitMQ connection URL; for a cluster, the URLs of its nodes separated by commas:"
            " the first that answers is used, and another when its node is lost"
        ),
    )
    grpc_listen: str = Field(default="127.0.0.1:50051", description="host:port of the gRPC API")
    http_listen: str = Field(
        default="",
        description=(
            "host:port of the REST/JSON API and the operations console (/console), served by"
            " the API process beside gRPC; empty: off (port 0 picks one, logged in http.started;"
            " API_PROCESSES > 1 share a fixed port, and with 0 each picks its own)"
        ),
    )
    public_endpoint: str = Field(
        default="",
        description=(
            "host:port clients dial, announced by ApiEndpointService (endpoint discovery); "
            "unset: GRPC_LISTEN's host and bound port, an unspecified host (0.0.0.0, [::]) "
            "announced as localhost"
        ),
    )

    # Queue topology
    amqp_queue: str = Field(default="image-operations", description="queue of operation IDs")
    amqp_delivery_limit: int = Field(
        default=5, ge=1, description="deliveries of one message before it is dead-lettered"
    )

    # Database
    db_pool_min: int = Field(default=2, ge=1, description="connections a process keeps open")
    db_pool_max: int = Field(default=10, ge=1, description="connections a process may open")
    db_command_timeout_seconds: float = Field(
        default=30.0, gt=0, description="limit of one database call"
    )
    db_tcp_user_timeout_seconds: float = Field(
        default=10.0,
        ge=0,
        description="a database connection whose server stops acknowledging (a dead host, a "
        "partition) is dropped after this long, in use or idle; 0 leaves it to the kernel",
    )
    startup_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="how long the API and the workers wait for the database at start-up",
    )

    # API
    api_processes: int = Field(
        default=1, ge=1, description="API processes sharing GRPC_LISTEN's port (SO_REUSEPORT)"
    )
    grpc_grace_seconds: float = Field(
        default=10.0, ge=0, description="how long in-flight calls may run after SIGTERM"
    )
    publish_timeout_seconds: float = Field(
        default=2.0, gt=0, description="how long the API waits for a broker confirm"
    )
    operation_cache_size: int = Field(
        default=10_000, ge=0, description="finished operations kept in API memory"
    )

    # Security and limits
    tls_cert_file: str = Field(default="", description="PEM certificate; with the key, TLS only")
    tls_key_file: str = Field(default="", description="PEM private key of the certificate")
    auth_cache_seconds: float = Field(
        default=5.0, ge=0, description="a checked token is trusted this long (revocation delay)"
    )
    grpc_max_message_bytes: int = Field(
        default=1024 * 1024, gt=0, description="largest request or response"
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=1000, gt=0, description="calls one API process serves at once"
    )
    http_max_concurrent_requests: int = Field(
        default=1000, gt=0, description="REST requests one API process serves at once"
    )
    rate_limit_per_second: float = Field(
        default=500.0, gt=0, description="calls per second per subject (token bucket refill)"
    )
    rate_limit_burst: int = Field(default=1000, gt=0, description="token bucket size")
    iam_token_lifetime_seconds: float = Field(
        default=43200.0,
        gt=0,
        le=7 * 86400,
        description="how long an IAM token made by IamTokenService.Create is accepted",
    )
    iam_token_audiences: str = Field(
        default="",
        description="comma-separated JWT audiences the token exchange accepts "
        "(empty: https://iam.<PUBLIC_ENDPOINT>/iam/v1/tokens, what the SDKs send)",
    )
    iam_token_exchanges_per_second: float = Field(
        default=10.0, gt=0, description="token exchanges per second per client address"
    )
    iam_token_exchange_burst: int = Field(
        default=20, gt=0, description="token exchanges one client address may make at once"
    )
    max_unfinished_operations_per_folder: int = Field(
        default=1000, gt=0, description="unfinished operations one folder may have"
    )
    download_allowed_networks: str = Field(
        default="",
        description="comma-separated CIDRs downloads may reach although private or local",
    )

    # Workers
    worker_concurrency: int = Field(
        default=16,
        ge=1,
        description="messages a worker process takes at once (prefetch; a message carries"
        " up to 128 operations), and Creates it downloads at once",
    )
    worker_grace_seconds: float = Field(
        default=30.0, ge=0, description="how long in-flight operations may run after SIGTERM"
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="how long a claimed Create is held without a heartbeat"
    )
    max_attempts: int = Field(
        default=5, ge=1, description="claims of one operation before it finishes with an error"
    )
    retry_max_seconds: float = Field(
        default=60.0, gt=0, description="how long a worker retries a transient error in place"
    )
    consumer_watch_interval_seconds: float = Field(
        default=5.0, gt=0, description="how often a worker checks its consumers are subscribed"
    )
    consumer_stall_seconds: float = Field(
        default=15.0, gt=0, description="ready messages unreceived this long: resubscribe"
    )
    outbox_interval_seconds: float = Field(
        default=1.0, gt=0, description="how often the relay looks for unpublished operations"
    )
    outbox_grace_seconds: float = Field(
        default=2.0, ge=0, description="age of an unpublished operation before the relay sends it"
    )
    sweep_interval_seconds: float = Field(
        default=5.0, gt=0, description="how often the sweeper looks for abandoned operations"
    )
    republish_after_seconds: float = Field(
        default=300.0, gt=0, description="an unfinished, unclaimed operation older is sent again"
    )
    operation_retention_seconds: float = Field(
        default=30 * 86400, gt=0, description="finished operations are removed after this"
    )
    idempotency_ttl_seconds: float = Field(
        default=86400, gt=0, description="idempotency keys are kept at least this long"
    )
    retention_interval_seconds: float = Field(
        default=600.0, gt=0, description="how often expired operations and keys are removed"
    )
    download_timeout_seconds: float = Field(
        default=600.0, gt=0, description="limit of one image download"
    )
    download_max_bytes: int = Field(
        default=64 * 1024**3, gt=0, description="largest image accepted (bytes)"
    )
    download_stall_seconds: float = Field(
        default=60.0, gt=0, description="a source silent this long is treated as unreachable"
    )

    health_interval_seconds: float = Field(
        default=2.0, gt=0, description="how often the database and broker are checked"
    )
    worker_health_file: str = Field(
        default="", description="if set, workers touch this file while their dependencies work"
    )

    # Observability
    metrics_listen: str = Field(
        default="",
        description=(
            "host:port of the Prometheus /metrics endpoint (empty: metrics off; port 0 picks"
            " a free port, logged in metrics.started); with API_PROCESSES > 1 the parent serves"
            " the sum of its children"
        ),
    )
    metrics_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how often the sampled gauges (pool in use, unfinished operations) refresh",
    )
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        description="OTLP collector URL for OpenTelemetry traces (empty: tracing off)",
    )
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] = Field(
        default="http/protobuf", description="how traces are sent to the OTLP endpoint"
    )
    otel_service_name: str = Field(
        default="",
        description="service.name of the traces (empty: baremetal-image-api / -workers)",
    )

    event_loop: Literal["asyncio", "uvloop"] = Field(
        default="uvloop", description="the event loop of the API and worker processes"
    )

    log_level: str = Field(
        default="INFO",
        description=(
            "DEBUG, INFO, WARNING or ERROR; DEBUG also shows tracebacks of expected failures."
            " Logs are JSON lines, or key=value lines when stdout is a terminal"
        ),
    )

    @model_validator(mode="after")
    def _networks_parse(self) -> Settings:
        from service.domain.network import parse_networks

        parse_networks(self.download_allowed_networks)  # ValueError names the bad entry
        return self

    @model_validator(mode="after")
    def _public_endpoint_is_dialable(self) -> Settings:
        from service.domain.endpoints import check_public_endpoint

        if self.public_endpoint:
            check_public_endpoint(self.public_endpoint)  # ValueError says what is wrong
        return self

    @model_validator(mode="after")
    def _shared_port_is_fixed(self) -> Settings:
        if self.api_processes > 1 and self.grpc_listen.rsplit(":", 1)[-1] == "0":
            raise ValueError("API_PROCESSES > 1 needs a fixed port in GRPC_LISTEN, not 0")
        return self

    @model_validator(mode="after")
    def _http_listen_is_host_port(self) -> Settings:
        if self.http_listen:
            _, colon, port = self.http_listen.rpartition(":")
            if not colon or not port.isdigit() or int(port) > 65535:
                raise ValueError(f"HTTP_LISTEN must be host:port, not {self.http_listen!r}")
        return self

    @model_validator(mode="after")
    def _metrics_listen_is_host_port(self) -> Settings:
        if self.metrics_listen:
            from service.runtime.exposition import parse_listen

            parse_listen(self.metrics_listen)  # ValueError says what is wrong
        return self

    @model_validator(mode="after")
    def _tls_needs_both_files(self) -> Settings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        return self

    @model_validator(mode="after")
    def _keys_outlive_nothing_they_point_to(self) -> Settings:
        # A key must not point at an operation that retention already removed.
        if self.idempotency_ttl_seconds > self.operation_retention_seconds:
            raise ValueError("IDEMPOTENCY_TTL_SECONDS must not exceed OPERATION_RETENTION_SECONDS")
        return self


# Which processes read each setting: what `python -m service --help` and `python -m workers
# --help` list. Every setting is in exactly one group; tests/unit/test_settings_in_help.py finds
# the reads in the code each process runs and holds these groups to them.
READ_BY_BOTH = frozenset(
    {
        "database_url",
        "amqp_url",
        "amqp_queue",
        "amqp_delivery_limit",
        "db_pool_min",
        "db_pool_max",
        "db_command_timeout_seconds",
        "db_tcp_user_timeout_seconds",
        "startup_timeout_seconds",
        "publish_timeout_seconds",  # the API's publish; the workers' relay
        "outbox_grace_seconds",  # the workers' relay waits it; the API marks within a quarter
        "download_allowed_networks",  # the API checks a source, the workers download it
        "operation_retention_seconds",
        "health_interval_seconds",
        "metrics_listen",
        "metrics_refresh_seconds",
        "otel_exporter_otlp_endpoint",
        "otel_exporter_otlp_protocol",
        "otel_service_name",
        "event_loop",
        "log_level",
    }
)
READ_BY_API_ONLY = frozenset(
    {
        "grpc_listen",
        "http_listen",
        "public_endpoint",
        "api_processes",
        "grpc_grace_seconds",
        "operation_cache_size",
        "tls_cert_file",
        "tls_key_file",
        "auth_cache_seconds",
        "grpc_max_message_bytes",
        "grpc_max_concurrent_rpcs",
        "http_max_concurrent_requests",
        "rate_limit_per_second",
        "rate_limit_burst",
        "iam_token_lifetime_seconds",
        "iam_token_audiences",
        "iam_token_exchanges_per_second",
        "iam_token_exchange_burst",
        "max_unfinished_operations_per_folder",
    }
)
READ_BY_WORKERS_ONLY = frozenset(
    {
        "worker_concurrency",
        "worker_grace_seconds",
        "lease_seconds",
        "max_attempts",
        "retry_max_seconds",
        "consumer_watch_interval_seconds",
        "consumer_stall_seconds",
        "outbox_interval_seconds",
        "sweep_interval_seconds",
        "republish_after_seconds",
        "idempotency_ttl_seconds",
        "retention_interval_seconds",
        "download_timeout_seconds",
        "download_max_bytes",
        "download_stall_seconds",
        "worker_health_file",
    }
)
