from service.core.settings import Settings


def test_opper_preset_uses_the_gateway_and_its_model_name(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPPER_API_KEY", "op-key")
    s = Settings(model_preset="opper")
    assert s.resolved_base_url == "https://api.opper.ai/v3/compat"
    assert s.resolved_model_id == "openai/gpt-4.1-nano"
    assert s.resolved_api_key == "op-key"


def test_openai_preset_and_explicit_values(monkeypatch) -> None:
    monkeypatch.delenv("OPPER_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    s = Settings(model_preset="openai")
    assert s.resolved_base_url == "https://api.openai.com/v1"
    assert s.resolved_model_id == "gpt-4.1-nano"
    assert s.resolved_api_key == "sk-test"
    custom = Settings(model_base_url="http://gateway.internal/v1", model_id="my-nano",
                      model_api_key="own")
    assert (custom.resolved_base_url, custom.resolved_model_id, custom.resolved_api_key) == (
        "http://gateway.internal/v1", "my-nano", "own")


def test_lists_come_from_comma_separated_environment_values(monkeypatch) -> None:
    monkeypatch.setenv("LONGDOC_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, ::1/128")
    monkeypatch.setenv("LONGDOC_WEBHOOK_RETRY_SCHEDULE", "0,5,300")
    s = Settings()
    assert s.webhook_allowed_networks == ["127.0.0.0/8", "::1/128"]
    assert s.webhook_retry_schedule == [0, 5, 300]


def test_two_data_dirs_get_two_queue_prefixes(tmp_path) -> None:
    a, b = Settings(data_dir=tmp_path / "a"), Settings(data_dir=tmp_path / "b")
    assert a.resolved_queue_prefix != b.resolved_queue_prefix
    assert a.resolved_queue_prefix == Settings(data_dir=tmp_path / "a").resolved_queue_prefix
