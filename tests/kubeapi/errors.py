"""API errors as the real API server reports them: a `Status` object with `reason` and `code`.

Everything inside the double raises `ApiError`; the HTTP layer turns it into the JSON `Status` body
that the `kubernetes` client parses into `ApiException`. The messages copy the real server's wording
because operators (and their tests) sometimes match on them.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failed API call, carrying what goes into the `Status` response."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The `Status` object a real server sends for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _qualified(resource: str, group: str) -> str:
    # The real server names a resource "plural.group" in messages, and only "plural" for the core group.
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(resource, group)} "{name}" not found',
        {"name": name, "group": group, "kind": resource},
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(resource, group)} "{name}" already exists',
        {"name": name, "group": group, "kind": resource},
    )


def conflict(resource: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        {"name": name, "group": group, "kind": resource},
    )


STALE_OBJECT = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid, with `causes` as (reason, field, message) triples."""
    text = ", ".join(f"{field}: {message}" if field else message for _, field, message in causes)
    if len(causes) > 1:
        text = "[" + text + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind}.{group} "{name}" is invalid: {text}' if group else f'{kind} "{name}" is invalid: {text}',
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": reason, "message": message, "field": field} for reason, field, message in causes
            ],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(resource: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        403,
        "Forbidden",
        f'{_qualified(resource, group)} "{name}" is forbidden: {why}',
        {"name": name, "group": group, "kind": resource},
    )


def expired(message: str) -> ApiError:
    # A watch or continue token older than the retained history: 410 with reason "Expired",
    # which is what the real server sends (apierrors.NewResourceExpired).
    return ApiError(410, "Expired", message)


def method_not_allowed(verb: str, what: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"{verb} is not supported on resources of kind {what!r}")


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({content_type!r}) - "
        "accepted media types include: " + ", ".join(accepted),
    )


def unprocessable(message: str) -> ApiError:
    # What the real server answers when a JSON patch cannot be applied (failed "test", missing path).
    return ApiError(422, "Invalid", message)


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", message)
