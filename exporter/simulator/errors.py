"""Error replies: DeepSeek error bodies, the exception that aborts a request with one, and the
API key a request presents (and how much of it a reply may show)."""

from __future__ import annotations

import http

from aiohttp import web

# Default error message and type per status, as the sheet lists them. 402's type is
# "unknown_error" as in a real reply: clients must classify by status, never by type.
ERRORS: dict[int, tuple[str, str]] = {
    400: ("Invalid Request", "invalid_request_error"),
    401: ("Authentication Fails, Your api key: **** is invalid", "authentication_error"),
    402: ("Insufficient Balance", "unknown_error"),
    422: ("Invalid Parameters", "invalid_request_error"),
    429: ("Rate Limit Reached", "rate_limit_error"),
    500: ("Server Error", "server_error"),
    503: ("Server Overloaded", "server_error"),
}


def error_response(
    status: int, message: str | None = None, error_type: str | None = None
) -> web.Response:
    if status in ERRORS:
        default_message, default_type = ERRORS[status]
    else:
        try:
            default_message, default_type = http.HTTPStatus(status).phrase, "api_error"
        except ValueError:
            default_message, default_type = "Error", "api_error"
    body = {
        "error": {
            "message": message if message is not None else default_message,
            "type": error_type if error_type is not None else default_type,
            "param": None,
            "code": "invalid_request_error",
        }
    }
    return web.json_response(body, status=status)


class Reject(Exception):
    """Aborts request handling with an error response (keeps the validation code flat)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def invalid(detail: str) -> Reject:
    return Reject(
        error_response(422, f"Failed to deserialize the JSON body into the target type: {detail}")
    )


def mask_key(key: str) -> str:
    # Only the last 4 characters, and none of a short key: echoing most of it would leak it.
    return "****" + key[-4:] if len(key) >= 8 else "****"


def presented_key(request: web.Request, anthropic: bool = False) -> str:
    if anthropic and request.headers.get("x-api-key"):
        return request.headers["x-api-key"].strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
