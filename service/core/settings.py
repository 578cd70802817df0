"""One settings object, read from ``LONGDOC_*`` environment variables."""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# RFC 3986 scheme followed by ':' - anything that starts like this is a URL, not a directory.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# S3 bucket naming rules (AWS "Bucket naming rules"), which S3-compatible stores follow too.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without leading or trailing "/"; "" for the bucket's root


def parse_storage_url(url: str) -> Path | S3Location | None:
    """A local directory, an S3 bucket and prefix, or None for the default (the data dir).

    Anything that looks like a URL with another scheme is refused: a typo such as ``s3:/x``
    used to create a local folder named ``s3:`` and store every file there.
    """
    if not url:
        return None
    scheme = _URL_SCHEME.match(url)
    if scheme is None:
        return Path(url)
    name = scheme.group(1).lower()
    if name == "file" and url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if name == "s3" and url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if "@" in bucket:
            raise ValueError("LONGDOC_STORAGE_URL: credentials do not go in the URL; set "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"LONGDOC_STORAGE_URL {url!r}: {bucket!r} is not an S3 bucket name "
                             "(3-63 lowercase letters, digits, '.' and '-')")
        if any(c in prefix for c in "?#") or "//" in prefix.strip("/"):
            raise ValueError(f"LONGDOC_STORAGE_URL {url!r}: write the prefix as s3://bucket/a/b")
        return S3Location(bucket, prefix.strip("/"))
    raise ValueError(
        f"LONGDOC_STORAGE_URL {url!r} is neither a directory nor a URL longdoc can store files at: "
        "use a path, file:///absolute/path or s3://bucket/prefix "
        "(with LONGDOC_S3_ENDPOINT_URL for an S3-compatible store)")


MODEL_PRESETS = {
    # name: (base URL, model id as the endpoint spells it)
    "opper": ("https://api.opper.ai/v3/compat", "openai/gpt-4.1-nano"),
    "openai": ("https://api.openai.com/v1", "gpt-4.1-nano"),
}


class Settings(BaseSettings):
    # A refused value is never echoed in the error: it may be a URL with a password in it.
    model_config = SettingsConfigDict(env_prefix="LONGDOC_", extra="ignore",
                                      hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".longdoc")
    database_url: str = ""
    # Redis is the default broker and always the model rate limiter's shared store.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Celery broker: empty for Redis at redis_url, or amqp://user:pass@host:5672/vhost for
    # RabbitMQ (quorum queues; an instance is its vhost).
    broker_url: str = ""
    # A directory (default: <data dir>/files), file:///path, or s3://bucket/prefix.
    storage_url: str = ""
    # An S3-compatible store (MinIO, Ceph RGW, R2, ...); empty for AWS S3 itself. Credentials
    # and region come from the usual AWS_* variables.
    s3_endpoint_url: str = ""

    max_upload_bytes: int = 200 * 1024 * 1024
    max_json_bytes: int = 4 * 1024 * 1024  # JSON request bodies (a job's schema lives here)
    max_pages: int = 5000
    # Encrypts what must be kept for a while but never in clear (PDF passwords). Without it, a
    # key is made once in the data dir (0600): set it for workers on several machines.
    secret_key: str = ""
    # Stored files no row refers to (a crash between storing and recording) are removed
    # after the grace period, by a sweep this often.
    blob_gc_interval_s: float = 3600.0
    blob_gc_grace_s: float = 3600.0
    # Documents are deleted this long after their upload, a job's data this long after it
    # ended (a job's ``retention_seconds`` can shorten it); the purge runs this often.
    retention_seconds: float = 30 * 86400.0
    purge_interval_s: float = 5.0

    # Model endpoint. ``model_preset`` picks base URL and id; explicit values win.
    model_preset: str = ""
    model: str = "gpt-4.1-nano"
    model_id: str = ""
    model_base_url: str = ""
    model_api_key: str = ""
    model_profiles_file: str = ""
    model_timeout_s: float = 600.0
    # The API and the model workers read the endpoint's GET /v1/models once at start, for at
    # most this long (0 = no check), and refuse a model whose shutdown date has passed unless
    # allowed (service/checks/startup.py).
    model_check_timeout_s: float = 3.0
    allow_retired_model: bool = False
    # Quick retries of one call; after them a chunk waits out an outage (``model_outage_s``).
    model_max_attempts: int = 4
    model_max_retry_s: float = 30.0
    model_concurrency: int = 64
    rate_limit_tier: str = ""
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0
    safety_margin_tokens: int = 2048
    reserved_output_tokens: int = 0

    # Parsing limits for the child process that opens untrusted files.
    parse_cpu_seconds: int = 60
    parse_memory_bytes: int = 280 * 1024 * 1024  # private memory of one parsing process
    parse_wall_seconds: float = 120.0

    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_timeout_s: float = 15.0
    # job.succeeded carries the extracted JSON up to this size; above, result_url only.
    webhook_max_result_bytes: int = 256 * 1024
    # Uploads by URL: the same guard as webhooks, with an allow-list of their own.
    url_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    url_fetch_timeout_s: float = 30.0
    # Seconds after the first attempt; the Standard Webhooks schedule by default.
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # Recovery (the database is the schedule): a worker holds a lease on what it works on and
    # renews it; the sweep re-sends what is runnable and unclaimed every few seconds: an expired
    # lease (a dead worker) at once, a task sent but never claimed (a lost message) after
    # ``redispatch_s``.
    sweep_interval_s: float = 2.0
    lease_s: float = 30.0
    redispatch_s: float = 60.0
    dispatch_window: int = 128  # chunks dispatched or running at a time, all tenants together
    # A model that keeps failing costs latency, not the job: chunks wait and retry, with
    # growing delays, for this long before their job fails.
    model_outage_s: float = 900.0
    shutdown_grace_s: float = 30.0  # SIGTERM: time to finish what is in flight, then hand back
    idempotency_ttl_s: float = 86400.0

    # Prefix of every broker key: instances with different data dirs can share one Redis. On
    # RabbitMQ the vhost in LONGDOC_BROKER_URL separates instances instead.
    queue_prefix: str = ""
    task_max_attempts: int = 5
    # Each worker serves Prometheus metrics at LONGDOC_HOST:metrics_port/metrics (0: none); the
    # API serves them on its own port. A worker keeps its processes' values in a directory of
    # its own under metrics_dir (default: the system's temporary directory), removed when it
    # exits; never share metrics_dir between containers (their pids collide).
    metrics_port: int = 9808
    metrics_dir: str = ""
    visibility_timeout_s: int = 3600
    log_level: str = "INFO"

    @field_validator("webhook_allowed_networks", "url_allowed_networks", "webhook_retry_schedule",
                     mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                import json

                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        parse_storage_url(value)
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        scheme = _URL_SCHEME.match(value)
        if value and (scheme is None or scheme.group(1).lower() not in BROKER_SCHEMES
                      or "://" not in value):
            given = f"{scheme.group(1)}:" if scheme else "a URL without a scheme"
            raise ValueError("LONGDOC_BROKER_URL must be a redis://, rediss://, amqp:// or "
                             f"amqps:// URL, not {given}")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/?#]+/?$", value):
            raise ValueError(f"LONGDOC_S3_ENDPOINT_URL must be http(s)://host[:port], not {value!r}")
        return value

    @field_validator("webhook_allowed_networks", "url_allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    def ensure_data_dir(self) -> Path:
        """The data dir, created private to this user (0700)."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.data_dir.stat().st_uid == os.getuid():
            self.data_dir.chmod(0o700)
        return self.data_dir

    @property
    def resolved_secret_key(self) -> bytes:
        if self.secret_key:
            return self.secret_key.encode()
        path = self.ensure_data_dir() / "secret.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes().strip()
        key = base64.urlsafe_b64encode(secrets.token_bytes(32))
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key

    @property
    def call_in_flight_s(self) -> float:
        """How long a model call can be out (its retries, then one more full attempt): a call
        booked as sent for longer had its worker die after its chunk was closed by someone
        else, and no longer holds back the job's charge or deletion."""
        return self.model_max_retry_s + self.model_timeout_s

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'longdoc.db').resolve()}"

    @property
    def storage_location(self) -> Path | S3Location:
        """Where stored files live: a local directory or an S3 bucket and prefix."""
        location = parse_storage_url(self.storage_url)
        return (self.data_dir / "files").resolve() if location is None else location

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.resolved_broker_url.lower().startswith(("amqp://", "amqps://"))

    @property
    def resolved_queue_prefix(self) -> str:
        if self.queue_prefix:
            return self.queue_prefix
        import hashlib

        digest = hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        return f"longdoc-{digest}:"

    @property
    def resolved_api_key(self) -> str:
        return (
            self.model_api_key
            or os.environ.get("OPPER_API_KEY", "")
            or os.environ.get("OPENAI_API_KEY", "")
        )

    @property
    def resolved_base_url(self) -> str:
        if self.model_base_url:
            return self.model_base_url
        if self.model_preset in MODEL_PRESETS:
            return MODEL_PRESETS[self.model_preset][0]
        if os.environ.get("OPPER_API_KEY") and not self.model_api_key:
            return MODEL_PRESETS["opper"][0]
        return MODEL_PRESETS["openai"][0]

    @property
    def resolved_model_id(self) -> str:
        """The model name sent on the wire (the gateway may prefix it)."""
        if self.model_id:
            return self.model_id
        if "opper.ai" in self.resolved_base_url:
            return f"openai/{self.model}"
        return self.model


@lru_cache
def get_settings() -> Settings:
    return Settings()
