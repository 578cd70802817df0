"""OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``, all four always
present (openai-openapi, ``components.schemas.Error``)."""

from __future__ import annotations

from typing import Any


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def unsupported_parameter(name: str, hint: str = "") -> OpenAIError:
    # Verbatim form: "Unsupported parameter: 'temperature' is not supported with this model."
    return OpenAIError(400, f"Unsupported parameter: '{name}' is not supported with this model."
                       + (f" {hint}" if hint else ""), param=name, code="unsupported_parameter")


def invalid_value(param: str, value: Any, allowed: list[str]) -> OpenAIError:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'" \
        if len(allowed) > 1 else f"'{allowed[0]}'"
    return OpenAIError(400, f"Invalid value: '{value}'. Supported values are: {listed}.",
                       param=param, code="invalid_value")
