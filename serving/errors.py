"""OpenAI-style errors: one exception type, raised anywhere in the app, answered as JSON.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "n", "code": null}}
"""

from __future__ import annotations

from typing import Any

# HTTP status -> OpenAI error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """A request the app refuses, with the HTTP status to answer and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message, param, code)  # all in args: survives pickling between replicas
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"
