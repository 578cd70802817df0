"""Requests as an attacker would send them, against the real API on SQLite and PostgreSQL: each
gets its documented 4xx and code, never a 5xx; a schema never makes the service fetch a URL or
read a file; a refused upload leaves nothing behind; secrets never sit in clear."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.conftest import _png
from tests.support.stack import Stack, no_temporary_files, upload, wait_document, wait_job, wait_until

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}


def job(client: httpx.Client, doc_id: str, schema: Any = None, **extra: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"document_ids": [doc_id], "schema": schema or SCHEMA, **extra})


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return dict(body["error"])


class Listener:
    """A TCP port that counts every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


# ---------------------------------------------------------------- schemas are data


def test_a_remote_ref_is_refused_and_never_fetched(hostile: Stack, keys, ready_doc) -> None:
    listener = Listener()
    try:
        with hostile.client(keys["a"]) as client:
            for ref in (f"http://127.0.0.1:{listener.port}/x.json",
                        f"https://127.0.0.1:{listener.port}/x.json#/a",
                        f"//127.0.0.1:{listener.port}/x.json"):
                schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
                error = assert_error(job(client, ready_doc, schema), 422, "invalid_schema")
                assert "#/properties/a" in error["message"]
        assert listener.connections == 0
    finally:
        listener.close()


def test_a_file_ref_is_refused_and_the_file_never_opened(hostile: Stack, keys, ready_doc,
                                                        tmp_path: Path) -> None:
    # A FIFO: opening it for reading would let this writer's non-blocking open succeed.
    fifo = tmp_path / "secret.json"
    os.mkfifo(fifo)
    with hostile.client(keys["a"]) as client:
        schema = {"type": "object", "properties": {"a": {"$ref": f"file://{fifo}#/nested"}}}
        assert_error(job(client, ready_doc, schema), 422, "invalid_schema")
    with pytest.raises(OSError):  # ENXIO: no process has the FIFO open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/b"}},
      "$defs": {"b": {"$ref": "#/$defs/c"}, "c": {"$ref": "#/$defs/b"}}}, "leads back to itself"),
    ({"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]},
     "recursion never ends"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "names nothing"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(a)\\1"}}}, "linear time"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'required'"),
    ({"type": "object", "properties": {"a": {"enum": []}}}, "at least one value"),
])
def test_schemas_that_cannot_work_are_422_with_the_reason(hostile: Stack, keys, ready_doc,
                                                         schema, words) -> None:
    with hostile.client(keys["a"]) as client:
        assert words in assert_error(job(client, ready_doc, schema), 422, "invalid_schema")["message"]


@pytest.mark.parametrize("levels", [100, 400, 900])
def test_deeply_nested_schemas_are_422(hostile: Stack, keys, ready_doc, levels: int) -> None:
    schema = '{"type": "object", "properties": {"x": ' * levels + "{}" + "}}" * levels
    body = f'{{"document_ids": ["{ready_doc}"], "schema": {schema}}}'
    with hostile.client(keys["a"]) as client:
        response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["error"]["code"] in (
            "invalid_schema", "invalid_request"), response.text[:300]


def test_deeply_nested_json_is_422(hostile: Stack, keys, ready_doc) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    body = f'{{"document_ids": ["{ready_doc}"], "schema": {deep}}}'
    with hostile.client(keys["a"]) as client:
        response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert_error(response, 422, "invalid_request")


def test_a_schema_with_too_many_properties_is_refused_quickly(hostile: Stack, keys, ready_doc) -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(6000)}}
    with hostile.client(keys["a"]) as client:
        error = assert_error(job(client, ready_doc, schema), 422, "invalid_schema")
        assert "5000 properties" in error["message"]


def test_a_catastrophic_pattern_validates_in_linear_time_while_others_work(hostile: Stack, keys) -> None:
    """The sandbox fills 'code' from the line 'code: aaa…a!', which ``^(a+)+$`` (inside anyOf,
    so a real model may fill it) rejects: with a backtracking matcher this took ~100 s inside a
    write transaction; another tenant's uploads kept failing with 'database is locked'."""
    from tests.support.pdfgen import build_pdf

    schema = {"type": "object", "required": ["code"], "properties": {
        "code": {"anyOf": [{"type": "string", "pattern": "^(a+)+$"}, {"type": "integer"}]}}}
    pdf = build_pdf([("text", ["code: " + "a" * 30 + "!"])])
    with hostile.client(keys["a"]) as a, hostile.client(keys["b"]) as b:
        doc = upload(a, "redos.pdf", data=pdf).json()
        wait_document(a, doc["id"])
        jobs = [job(a, doc["id"], schema, instructions=f"run {i}").json()["id"] for i in range(5)]
        uploads = [upload(b, f"v{i}.png", data=_png()) for i in range(10)]
        ended = [wait_job(a, j, 60) for j in jobs]
    assert [u.status_code for u in uploads] == [201] * 10
    for result in ended:
        assert result["status"] == "failed" and result["error"]["code"] == "model_output_invalid"
        assert "a" * 30 not in result["error"]["message"], "errors never quote extracted values"


# ---------------------------------------------------------------- bodies and limits


def _multipart(client: httpx.Client, body: bytes, boundary: str) -> httpx.Response:
    return client.post("/v1/documents", content=body,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def _part(name: str, data: bytes, boundary: str = "B", filename: str | None = "f.png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode() + data + b"\r\n"


@pytest.mark.parametrize("case", ["empty boundary", "long boundary", "wrong boundary", "no colon",
                                  "long filename", "not form-data"])
def test_malformed_multipart_is_400_invalid_multipart(hostile: Stack, keys, case: str) -> None:
    png = _png()
    bodies = {
        "empty boundary": ("", _part("file", png) + b"--B--\r\n"),
        "long boundary": ("x" * 200, _part("file", png, "x" * 200) + b"--" + b"x" * 200 + b"--\r\n"),
        "wrong boundary": ("B", _part("file", png, "C") + b"--C--\r\n"),
        "no colon": ("B", b"--B\r\nContent-Disposition form-data\r\n\r\nx\r\n--B--\r\n"),
        "long filename": ("B", _part("file", png, filename="n" * 8000) + b"--B--\r\n"),
        "not form-data": ("B", b'--B\r\nContent-Disposition: attachment; name="file"\r\n\r\n'
                               b"x\r\n--B--\r\n"),
    }
    boundary, body = bodies[case]
    with hostile.client(keys["a"]) as client:
        response = _multipart(client, body, boundary)
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["code"] in ("invalid_multipart", "invalid_request")
    no_temporary_files(hostile.data_dir)


def test_junk_before_the_first_boundary_is_a_preamble(hostile: Stack, keys) -> None:
    body = b"junk junk\r\n" + _part("file", _png()) + b"--B--\r\n"
    with hostile.client(keys["a"]) as client:
        response = _multipart(client, body, "B")
        assert response.status_code in (201, 400), response.text


def test_form_fields_count_against_the_upload_cap(hostile: Stack, keys) -> None:
    with hostile.client(keys["a"]) as client:
        fields = b"".join(_part("password", b"p" * 4000, filename=None) for _ in range(400))
        response = _multipart(client, fields + _part("file", _png()) + b"--B--\r\n", "B")
        assert response.status_code in (413, 422), response.text
        fields = _part("note", b"x", filename=None) + _part("file", _png()) + b"--B--\r\n"
        assert_error(_multipart(client, fields, "B"), 422, "invalid_request")


def test_json_bodies_have_a_cap_and_are_read_only_after_auth(hostile: Stack, keys, ready_doc) -> None:
    big = {"document_ids": [ready_doc], "schema": SCHEMA, "instructions": "x" * 300_000}
    with hostile.client(keys["a"]) as client:
        assert_error(client.post("/v1/jobs", json=big), 413, "request_too_large")
    with hostile.client("ld_not-a-key") as client:
        assert_error(client.post("/v1/jobs", json=big), 401, "unauthorized")
    with hostile.client(keys["a"]) as client:
        assert_error(client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}),
                     422, "invalid_request")
        assert_error(client.post("/v1/jobs", content=b"x", headers={"content-type": "text/plain"}),
                     415, "unsupported_media_type")


@pytest.mark.parametrize("raw", ["Infinity", "true", '"5"', "1e400", "-1", "NaN"])
def test_numbers_are_finite_numbers(hostile: Stack, keys, ready_doc, raw: str) -> None:
    body = f'{{"document_ids": ["{ready_doc}"], "schema": {json.dumps(SCHEMA)}, "max_cost_usd": {raw}}}'
    with hostile.client(keys["a"]) as client:
        response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert_error(response, 422, "invalid_request")


# ---------------------------------------------------------------- webhook targets


@pytest.mark.parametrize("url, code", [
    ("http://127.0.0.1:80:80/x", "invalid_webhook_url"),
    ("http://127.0.0.1:99999/x", "invalid_webhook_url"),
    ("http://127.0.0.1:-1/x", "invalid_webhook_url"),
    ("http://127.0.0. 1/x", "invalid_webhook_url"),
    ("http://" + "a" * 64 + ".example/x", "invalid_webhook_url"),
    ("http://user:secret@127.0.0.1/x", "invalid_webhook_url"),
    ("http://xn--a/x", "invalid_webhook_url"),
    ("ftp://127.0.0.1/x", "invalid_webhook_url"),
    ("http://10.1.2.3/x", "webhook_url_not_allowed"),
    ("http://[::ffff:10.0.0.1]/x", "webhook_url_not_allowed"),
    ("http://[::10.0.0.1]/x", "webhook_url_not_allowed"),
    ("http://[2002:a00:1::1]/x", "webhook_url_not_allowed"),
    ("http://[64:ff9b::a00:1]/x", "webhook_url_not_allowed"),
    ("http://[fec0::1]/x", "webhook_url_not_allowed"),
    ("http://[::]/x", "webhook_url_not_allowed"),
    ("http://169.254.169.254/latest/meta-data", "webhook_url_not_allowed"),
])
def test_webhook_urls_are_parsed_strictly_and_judged(hostile: Stack, keys, ready_doc, url, code) -> None:
    with hostile.client(keys["a"]) as client:
        error = assert_error(job(client, ready_doc, webhook_url=url), 422, code)
        assert "secret" not in error["message"] and "10.0.0.1" not in error["message"]


# ---------------------------------------------------------------- ids, cursors, tenants


def test_unknown_ids_are_404_and_never_echoed(hostile: Stack, keys) -> None:
    long_id = "job_" + "A" * 10_000
    with hostile.client(keys["a"]) as client:
        for path in (f"/v1/jobs/{long_id}", f"/v1/documents/doc_{'z' * 5000}",
                     f"/v1/jobs/{long_id}/result", "/v1/jobs/job_" + "0" * 24):
            response = client.get(path)
            assert_error(response, 404, "not_found")
            assert "AAAA" not in response.text and "zzzz" not in response.text


def test_a_cursor_from_another_tenant_is_no_such_item(hostile: Stack, keys) -> None:
    with hostile.client(keys["b"]) as b, hostile.client(keys["a"]) as a:
        theirs = upload(b, "b.png", data=_png()).json()["id"]
        made_up = "doc_" + "0" * 24
        for cursor in (theirs, made_up):
            assert_error(a.get("/v1/documents", params={"before": cursor}), 422, "invalid_request")


# ---------------------------------------------------------------- nothing left behind


def _stored_files(stack: Stack) -> set[str]:
    root = stack.data_dir / "files"
    return {p.name for p in root.glob("*/*/*") if p.is_file()} | {
        p.name for p in (root / "tmp").iterdir()}


def test_a_refused_upload_leaves_nothing_behind(hostile: Stack, keys) -> None:
    no_temporary_files(hostile.data_dir)
    before = _stored_files(hostile)
    with hostile.client(keys["a"]) as client:
        assert_error(upload(client, "x.txt", data=b"just text, not a document " * 10), 415,
                     "unsupported_media_type")
        assert_error(upload(client, "big.pdf", data=b"%PDF-1.4\n" + b"0" * (2 * 1024 * 1024)), 413,
                     "file_too_large")
        assert_error(_multipart(client, _part("file", b"%PDF-1.4 unique-refused")
                                + _part("file", b"again") + b"--B--\r\n", "B"), 422, "invalid_request")
    no_temporary_files(hostile.data_dir)
    assert _stored_files(hostile) == before


def test_a_stored_file_no_row_refers_to_is_collected(hostile: Stack, keys) -> None:
    with hostile.client(keys["a"]) as client:
        kept = upload(client, "kept.png", data=_png()).json()
        wait_document(client, kept["id"])
    root = hostile.data_dir / "files"
    orphan_key = "f" * 64
    orphan = root / orphan_key[:2] / orphan_key[2:4] / orphan_key
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    kept_path = root / kept["sha256"][:2] / kept["sha256"][2:4] / kept["sha256"]
    an_hour_ago = time.time() - 3600
    for path in (orphan, kept_path):
        os.utime(path, (an_hour_ago, an_hour_ago))
    wait_until(lambda: not orphan.exists(), 30, "the sweep to remove the orphan")
    assert kept_path.exists(), "a file a document refers to stays"


# ---------------------------------------------------------------- secrets at rest


def test_the_pdf_password_is_never_stored_in_clear(hostile: Stack, keys) -> None:
    from tests.support.stack import CORPUS

    password = "openpassword"
    long_password = "p" * 4096
    pdf = CORPUS / "005-libreoffice-writer-password" / "libreoffice-writer-password.pdf"
    with hostile.client(keys["a"]) as client:
        created = upload(client, pdf, password=long_password)
        assert created.status_code == 201, created.text  # 4,096 characters fit (sealed in Text)
        assert wait_document(client, created.json()["id"])["error"]["code"] == "pdf_password_incorrect"
        doc = upload(client, pdf, password=password).json()
        assert wait_document(client, doc["id"])["status"] == "ready"
    if hostile.pg is None:
        db_files = [p for p in hostile.data_dir.iterdir() if p.name.startswith("longdoc.db")]
        for path in db_files:
            assert password.encode() not in path.read_bytes(), path.name
        assert stat.S_IMODE(hostile.data_dir.stat().st_mode) == 0o700
        for path in [*db_files, *(hostile.data_dir / "files").glob("*/*/*")]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        db = sqlite3.connect(hostile.data_dir / "longdoc.db")
        sealed = db.execute("SELECT password_sealed FROM documents WHERE id = ?", (doc["id"],)).fetchone()
    else:
        with psycopg.connect(hostile.pg.url) as conn:
            sealed = conn.execute("SELECT password_sealed FROM documents WHERE id = %s",
                                  (doc["id"],)).fetchone()
    assert sealed == (None,), "forgotten once the file is open"


def test_logs_carry_codes_and_ids_never_extracted_values(hostile: Stack, keys) -> None:
    from tests.support.pdfgen import build_pdf

    marker = "SECRETVALUE" + "Q" * 10
    schema = {"type": "object", "required": ["name"],
              "properties": {"name": {"type": "string", "maxLength": 3}}}
    with hostile.client(keys["a"]) as client:
        doc = upload(client, "m.pdf", data=build_pdf([("text", [f"name: {marker}"])])).json()
        wait_document(client, doc["id"])
        ended = wait_job(client, job(client, doc["id"], schema).json()["id"])
        assert ended["status"] == "failed" and ended["error"]["code"] == "model_output_invalid"
    assert marker not in hostile.logs()
