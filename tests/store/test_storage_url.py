"""Where files live is read from one setting, and a value longdoc cannot honour stops the
service at start-up instead of quietly storing files somewhere else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.settings import S3Location, Settings
from tests.support.stack import free_port


@pytest.mark.parametrize("url", ["ftp://x", "s3:/x", "S3://bucket/x", "s3://B/x", "gs://bucket"])
def test_an_unknown_storage_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="LONGDOC_STORAGE_URL"):
        Settings(storage_url=url)


def test_storage_urls_name_a_directory_or_a_bucket(tmp_path: Path) -> None:
    assert Settings(storage_url="s3://longdoc-files/a/b/").storage_location == S3Location(
        "longdoc-files", "a/b")
    assert Settings(storage_url="s3://longdoc-files").storage_location == S3Location("longdoc-files", "")
    assert Settings(storage_url=f"file://{tmp_path}").storage_location == tmp_path
    assert Settings(storage_url="relative/dir").storage_location == Path("relative/dir")
    assert Settings(data_dir=tmp_path).storage_location == (tmp_path / "files").resolve()


def test_a_broker_url_with_a_password_is_never_echoed() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(broker_url="sqs://user:hunter2@queue.example")
    assert "hunter2" not in str(refused.value)
    assert Settings(broker_url="amqp://guest:guest@127.0.0.1:5672/x").broker_is_amqp
    assert not Settings().broker_is_amqp


@pytest.mark.parametrize("url", ["ftp://x", "s3:/x"])
def test_the_api_and_the_workers_refuse_to_start_on_an_unknown_scheme(url: str, tmp_path: Path) -> None:
    env = {**os.environ, "LONGDOC_DATA_DIR": str(tmp_path / "data"), "LONGDOC_STORAGE_URL": url}
    for argv in ([sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory",
                  "--host", "127.0.0.1", "--port", str(free_port())],
                 [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "cpu",
                  "-P", "solo", "--loglevel", "WARNING"]):
        # In a scratch directory: a folder named after the scheme would show up here.
        out = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0
        assert "LONGDOC_STORAGE_URL" in out.stderr and "s3://bucket/prefix" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing was created"


def test_the_scaled_compose_file_configures_s3_and_rabbitmq(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.store.queue import make_celery
    from service.store.s3 import S3Storage
    from service.store.storage import open_storage
    from tests.deploy.checks import load_compose

    for name, value in load_compose("compose.scale.yaml").environment("worker-cpu").items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.base, storage.endpoint_url) == ("longdoc", "files/", "http://minio:9000")
    assert getattr(storage.config, "s3", None) == {"addressing_style": "path"}  # set at run time
    queues = make_celery(settings).conf.task_queues
    assert settings.broker_is_amqp
    assert {q.name: q.queue_arguments["x-queue-type"] for q in queues} == {"cpu": "quorum",
                                                                          "model": "quorum"}
    assert {q.exchange.type for q in queues} == {"topic"}
