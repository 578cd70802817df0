"""A real S3-protocol server on loopback: moto's standalone server in a process of its own.

    python -m tests.support.s3server --port 9000

Besides moto's S3 API it answers ``POST /_longdoc/backdate`` (JSON ``{"bucket", "key",
"seconds"}``): the object's LastModified moves that far into the past, as ``os.utime`` ages a
local file, so a test can show the collector an object older than its grace period.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx

from tests.support.stack import ROOT, free_port, wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # A developer's ~/.aws (profiles, SSO, other endpoints) never leaks into a test.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
BACKDATE = "/_longdoc/backdate"


class S3Server:
    """moto's server on 127.0.0.1 (an IP literal, path-style addressing: no DNS involved)."""

    def __init__(self, log_path: str = os.devnull) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, **CREDENTIALS}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.s3server", "--port",
                                      str(self.port)], cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the S3 server exited with {self.proc.returncode}")
            try:
                return httpx.get(f"{self.endpoint}/moto-api/data.json", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, "the S3 server (moto) to answer")

    def client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1").client(
            "s3", endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}, proxies={},
                          retries={"mode": "standard", "max_attempts": 2}))

    def env(self, bucket: str, prefix: str = "files") -> dict[str, str]:
        """What a stack needs to keep its files in ``bucket`` under ``prefix``."""
        return {**CREDENTIALS, "LONGDOC_STORAGE_URL": f"s3://{bucket}/{prefix}",
                "LONGDOC_S3_ENDPOINT_URL": self.endpoint,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def backdate(self, bucket: str, key: str, seconds: float) -> None:
        httpx.post(f"{self.endpoint}{BACKDATE}", json={"bucket": bucket, "key": key,
                                                      "seconds": seconds}, timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _app() -> Any:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.s3.models import s3_backends

    moto = DomainDispatcherApplication(create_backend_app)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != BACKDATE:
            return moto(environ, start_response)
        body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        bucket = s3_backends[DEFAULT_ACCOUNT_ID]["global"].get_bucket(body["bucket"])
        key = bucket.keys[body["key"]]
        key.last_modified = key.last_modified - timedelta(seconds=float(body["seconds"]))
        start_response("204 No Content", [])
        return [b""]

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    server = make_server("127.0.0.1", args.port, _app(), threaded=True,
                         request_handler=MotoRequestHandler)
    print(f"S3 (moto) on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()  # until SIGTERM


if __name__ == "__main__":
    main()
