"""``--record FILE``: what a schema became on the wire and what the API said to it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sandbox.conftest import chat, image_url, schema_body, serve


def test_every_request_and_response_is_one_json_line(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    picture = image_url(1024, 1024)
    good = schema_body("Title: Lease")
    good["messages"][0]["content"] = [{"type": "text", "text": "Title: Lease"},
                                      {"type": "image_url", "image_url": {"url": picture}}]
    bad = schema_body("hi", {"type": "object", "properties": {"a": {"type": "string"}}})
    with serve(record=str(record), api_key="sk-secret") as url:
        ok = chat(url, good, authorization="Bearer sk-secret")
        refused = chat(url, bad, authorization="Bearer sk-secret")
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(line["seq"], line["direction"]) for line in lines] == [
        (1, "request"), (1, "response"), (2, "request"), (2, "response")]
    request, response = lines[0], lines[1]
    assert request["method"] == "POST" and request["path"] == "/v1/chat/completions"
    assert request["body"]["response_format"] == good["response_format"]
    # The image is elided (its length and hash kept); the key is never written.
    sent_image = request["body"]["messages"][0]["content"][1]["image_url"]["url"]
    assert sent_image.startswith("data:image/png;base64,<") and str(len(picture)) in sent_image
    assert request["headers"]["authorization"] == "Bearer ***"
    assert "sk-secret" not in record.read_text()
    assert response["status"] == 200 and response["body"] == ok.json()
    assert response["headers"]["content-type"] == "application/json"
    assert lines[3]["status"] == 400 and lines[3]["body"] == refused.json()
    assert "'additionalProperties' is required" in lines[3]["body"]["error"]["message"]
