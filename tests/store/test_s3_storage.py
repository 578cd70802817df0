"""The whole service with its files in S3 (moto's server on loopback): uploads stream into
multipart uploads, parsers read ranged GETs, page renders and artifacts live in the bucket, and
the upload limit, deduplication and the collector keep their promises there."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.support.fileserver import FileServer
from tests.support.s3server import S3Server
from tests.support.stack import (
    CORPUS,
    Stack,
    free_port,
    read_http_reply,
    start_stack,
    upload,
    wait_document,
    wait_http,
    wait_job,
    wait_until,
)

MiB = 1024 * 1024
SCHEMA = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
TEXT_PDF = CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf"
SCANNED_PDF = CORPUS / "007-imagemagick-images" / "imagemagick-images.pdf"
LIMIT = 12 * MiB  # above one 8 MiB part, so a refused upload has a multipart upload to abort


@pytest.fixture(scope="module")
def s3_stack(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("s3-stack"), s3=s3_server, env_extra={
        "LONGDOC_MAX_UPLOAD_BYTES": str(LIMIT),
        "LONGDOC_BLOB_GC_INTERVAL_S": "1",
        "LONGDOC_BLOB_GC_GRACE_S": "600"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(s3_stack: Stack) -> str:
    return s3_stack.create_key("s3")["api_key"]


def noise_png(seed: int, side: int = 1800) -> bytes:
    """An incompressible PNG larger than one upload part (~9.7 MB)."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, "PNG", compress_level=1)
    assert len(out.getvalue()) > 8 * MiB
    return out.getvalue()


def objects(s3: S3Server, bucket: str) -> dict[str, Any]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def blobs(s3: S3Server, bucket: str) -> set[str]:
    """Content keys filed under files/ab/cd/<sha256>."""
    return {k.rsplit("/", 1)[1] for k in objects(s3, bucket)
            if k.count("/") == 3 and not k.startswith(("files/tmp/", "files/touched/"))}


def read_json(s3: S3Server, bucket: str, key: str) -> Any:
    body = s3.client().get_object(Bucket=bucket, Key=f"files/{key[:2]}/{key[2:4]}/{key}")["Body"].read()
    try:
        return json.loads(body)
    except ValueError:
        return None  # an upload or an image


def pending_uploads(s3: S3Server, bucket: str) -> list[Any]:
    return list(s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_the_whole_path_runs_on_s3(s3_stack: Stack, s3_server: S3Server, key: str) -> None:
    big = noise_png(1)
    server = FileServer(routes={"/scan.pdf": SCANNED_PDF.read_bytes()})
    try:
        with s3_stack.client(key) as client:
            text = upload(client, TEXT_PDF).json()
            photo = upload(client, "noise.png", data=big).json()  # two parts, read back ranged
            scan = client.post("/v1/documents", json={"url": f"{server.url}/scan.pdf"})
            assert scan.status_code == 201, scan.text
            docs = [wait_document(client, d["id"]) for d in (text, photo, scan.json())]
            assert [d["status"] for d in docs] == ["ready"] * 3, docs
            assert [d["pages"] for d in docs] == [4, 1, 6]
            job = client.post("/v1/jobs", json={"document_ids": [d["id"] for d in docs],
                                                "schema": SCHEMA}).json()
            assert wait_job(client, job["id"])["status"] == "succeeded"
            assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 200
    finally:
        server.close()
    stored = blobs(s3_server, s3_stack.bucket)
    assert {d["sha256"] for d in docs} <= stored
    # What the forked parser wrote: a pages artifact per document, and the images its pages
    # name (the photo scaled down, the renders of the scanned pages).
    artifacts = [pages for pages in (read_json(s3_server, s3_stack.bucket, k) for k in stored)
                 if isinstance(pages, list)]
    assert sorted(len(pages) for pages in artifacts) == [1, 4, 6]
    images = {page["image"] for pages in artifacts for page in pages if page["image"]}
    assert len(images) >= 2 and images <= stored
    assert not any(k.startswith("files/tmp/") for k in objects(s3_server, s3_stack.bucket))
    assert pending_uploads(s3_server, s3_stack.bucket) == []
    assert not (s3_stack.data_dir / "files").exists(), "nothing is stored on the local disk"
    with s3_stack.client() as client:
        assert client.get("/readyz").json()["checks"]["storage"] == "ok"


def test_the_same_file_twice_is_one_object(s3_stack: Stack, s3_server: S3Server, key: str) -> None:
    data = noise_png(2)
    with s3_stack.client(key) as client:
        uploaded = upload(client, "a.png", data=data)
        assert uploaded.status_code == 201, uploaded.text
        first = wait_document(client, uploaded.json()["id"])
        before = blobs(s3_server, s3_stack.bucket)
        second = wait_document(client, upload(client, "b.png", data=data).json()["id"])
    assert first["status"] == second["status"] == "ready"
    assert first["sha256"] == second["sha256"] and first["id"] != second["id"]
    assert blobs(s3_server, s3_stack.bucket) == before, "no second copy of anything"
    # Stored again: the marker that keeps the collector off it for the grace period.
    assert f"files/touched/{first['sha256']}" in objects(s3_server, s3_stack.bucket)
    assert pending_uploads(s3_server, s3_stack.bucket) == []


def test_the_collector_aborts_an_abandoned_upload_but_not_one_just_begun(
        s3_stack: Stack, s3_server: S3Server) -> None:
    """An API process killed mid-upload leaves a multipart upload behind; the collector aborts
    it once it is older than the grace period, but never one whose first part is still on its
    way (moto, like some S3-compatible stores, reports every upload as initiated in 2010)."""
    s3 = s3_server.client()
    now = int(time.time())
    # A stray key someone else left under tmp/ (digits Python calls digits, float() refuses)
    # is collected like any other and stops nothing.
    stray = s3.create_multipart_upload(Bucket=s3_stack.bucket, Key="files/tmp/\u2460\u00b2-stray")
    abandoned = s3.create_multipart_upload(Bucket=s3_stack.bucket,
                                           Key=f"files/tmp/{now - 3600}-{os.urandom(8).hex()}")
    begun = s3.create_multipart_upload(Bucket=s3_stack.bucket,
                                       Key=f"files/tmp/{now}-{os.urandom(8).hex()}")
    try:
        wait_until(lambda: not {abandoned["UploadId"], stray["UploadId"]} &
                   {u["UploadId"] for u in pending_uploads(s3_server, s3_stack.bucket)},
                   60, "the collector to abort the abandoned uploads")
        # The sweep that aborted it saw the other one too, and left it.
        assert begun["UploadId"] in {u["UploadId"] for u in pending_uploads(s3_server, s3_stack.bucket)}
    finally:
        with contextlib.suppress(s3.exceptions.NoSuchUpload):
            s3.abort_multipart_upload(Bucket=s3_stack.bucket, Key=begun["Key"],
                                      UploadId=begun["UploadId"])


def test_the_upload_limit_acts_while_streaming_to_s3(s3_stack: Stack, s3_server: S3Server,
                                                     key: str) -> None:
    before = objects(s3_server, s3_stack.bucket)
    boundary = "XyZ"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n"
            "Content-Type: application/pdf\r\n\r\n%PDF-1.4\n").encode()

    def chunk(payload: bytes) -> bytes:
        return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"

    with socket.create_connection(("127.0.0.1", s3_stack.api_port), timeout=30) as sock:
        sock.sendall((f"POST /v1/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        sock.sendall(chunk(head + os.urandom(10 * MiB)))
        # Past one part, the upload is already streaming into a multipart upload.
        wait_until(lambda: pending_uploads(s3_server, s3_stack.bucket), 30,
                   "a multipart upload while the body arrives")
        # Past the limit; the body never ends, so the answer can only come from reading.
        with contextlib.suppress(OSError):  # the server may answer and close before taking it all
            sock.sendall(chunk(os.urandom(3 * MiB)))
        reply = read_http_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"file_too_large" in reply
    assert pending_uploads(s3_server, s3_stack.bucket) == [], "the multipart upload was aborted"
    assert objects(s3_server, s3_stack.bucket).keys() == before.keys(), "nothing was stored"


def test_the_collector_removes_only_old_unreferenced_objects(s3_stack: Stack, s3_server: S3Server,
                                                            key: str) -> None:
    with s3_stack.client(key) as client:
        kept = wait_document(client, upload(client, TEXT_PDF, filename="kept.pdf").json()["id"])
    s3 = s3_server.client()
    orphan, fresh = "f" * 64, "e" * 64
    for name in (orphan, fresh):
        s3.put_object(Bucket=s3_stack.bucket, Key=f"files/{name[:2]}/{name[2:4]}/{name}",
                          Body=b"left by a crash")
    for name in (orphan, kept["sha256"]):  # older than the grace period (600 s)
        s3_server.backdate(s3_stack.bucket, f"files/{name[:2]}/{name[2:4]}/{name}", 3600)
        marker = f"files/touched/{name}"
        if marker in objects(s3_server, s3_stack.bucket):
            s3_server.backdate(s3_stack.bucket, marker, 3600)
    wait_until(lambda: orphan not in blobs(s3_server, s3_stack.bucket), 30,
               "the collector to remove the old orphan")
    stored = blobs(s3_server, s3_stack.bucket)
    assert kept["sha256"] in stored, "an object a document refers to stays"
    assert fresh in stored, "an unreferenced object inside the grace period stays"


def test_a_store_that_does_not_answer_is_a_503_not_a_500(s3_server: S3Server, tmp_path) -> None:
    """The API alone, on a bucket that does not exist: readiness and uploads say "try again"."""
    s = Stack(tmp_path)
    s.data_dir = tmp_path / "data"
    s.data_dir.mkdir()
    s.env = {**os.environ, "LONGDOC_DATA_DIR": str(s.data_dir),
             **s3_server.env("no-such-bucket")}
    s.pg = None
    try:
        s.longdoc(["migrate"])
        api_port = free_port()
        s.url = f"http://127.0.0.1:{api_port}"
        proc = s._spawn("api", [sys.executable, "-m", "uvicorn", "service.api.app:create_app",
                                "--factory", "--host", "127.0.0.1", "--port", str(api_port)])
        wait_http(f"{s.url}/healthz", 60, [proc])
        with s.client(s.create_key("outage")["api_key"]) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["storage"].startswith("unavailable")
            refused = upload(client, TEXT_PDF)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "not_ready"
            assert refused.headers["retry-after"] == "5"
    finally:
        s.stop()
