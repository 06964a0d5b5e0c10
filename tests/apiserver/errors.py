"""API errors as upstream sends them: a ``metav1.Status`` body with code, reason and details.

The reasons and messages copy ``k8s.io/apimachinery/pkg/api/errors`` so that clients which
branch on them (``reason == "AlreadyExists"``, ``code == 410``) behave as against a real server.
"""

from __future__ import annotations

from typing import Any

from tests.apiserver.resources import ResourceType


class ApiError(Exception):
    """A failed API call; ``status()`` is the response body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, details=self.details)


def status_body(
    code: int, reason: str, message: str, *, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    if not reason:
        del body["reason"]
    return body


def _details(rt: ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    return details


def _qualified(rt: ResourceType) -> str:
    return rt.plural if not rt.group else f"{rt.plural}.{rt.group}"


def not_found(rt: ResourceType, name: str) -> ApiError:
    msg = f'{_qualified(rt)} "{name}" not found'
    return ApiError(404, "NotFound", msg, details=_details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    msg = f'{_qualified(rt)} "{name}" already exists'
    return ApiError(409, "AlreadyExists", msg, details=_details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    msg = f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": {why}'
    return ApiError(409, "Conflict", msg, details=_details(rt, name))


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(rt: ResourceType, name: str, why: str) -> ApiError:
    msg = f'{rt.kind} "{name}" is invalid: {why}'
    return ApiError(422, "Invalid", msg, details=_details(rt, name))


def invalid_fields(rt: ResourceType, name: str, errs: list[Any]) -> ApiError:
    """NewInvalid: one message for all field errors (bracketed when more than one), each
    also a ``details.causes`` entry. ``errs`` are podstatus.FieldError-like objects."""
    text = str(errs[0]) if len(errs) == 1 else "[" + ", ".join(str(e) for e in errs) + "]"
    details: dict[str, Any] = {"name": name, "kind": rt.kind, "causes": [e.cause() for e in errs]}
    if rt.group:
        details["group"] = rt.group
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {text}', details=details)


def forbidden(rt: ResourceType, name: str, why: str) -> ApiError:
    msg = f'{_qualified(rt)} "{name}" is forbidden: {why}'
    return ApiError(403, "Forbidden", msg, details=_details(rt, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")


def unsupported_media_type(content_type: str) -> ApiError:
    msg = (
        f'the body of the request was in an unknown format - accepted media types: "{content_type}"'
    )
    return ApiError(415, "UnsupportedMediaType", msg)


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")
