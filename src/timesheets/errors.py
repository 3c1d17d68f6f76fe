"""Errors that are safe to show to clients, and the JSON body every error response carries.

ApiError                  400  -> {"error", "message", "detail"?, "errors"?}
  MalformedBody           400
  InvalidIdempotencyKey   400
  ValidationFailed        422  (with the fields at fault)
  Forbidden               403
  NotFound                404
  MethodNotAllowed        405
  Conflict                409
    IdempotencyKeyInUse   409  (the first request with the key is still being processed)
  IdempotencyKeyReused    422  (the key came with another request)
  PreconditionFailed      412  (If-Match)
  PayloadTooLarge         413
  UnsupportedMediaType    415
  ServiceUnavailable      503  (with Retry-After)
(auth.AuthError is rendered by the same functions, with its WWW-Authenticate challenge.)
"""

from typing import Any, ClassVar


class ApiError(Exception):
    """An error whose message is safe to show to the client."""

    status_code: ClassVar[int] = 400
    error: ClassVar[str] = "bad_request"
    message: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body

    def headers(self) -> dict[str, str]:
        return {}


class MalformedBody(ApiError):
    error = "malformed_body"
    message = "The request body could not be parsed"


class FieldError(dict[str, str]):
    """One field at fault: {"field": ..., "message": ...}."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field=field, message=message)


class ValidationFailed(ApiError):
    status_code = 422
    error = "validation_failed"
    message = "The request is invalid"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(error["message"] for error in errors))
        self.errors = errors

    @classmethod
    def field(cls, field: str, message: str) -> "ValidationFailed":
        return cls([FieldError(field, message)])

    def body(self) -> dict[str, Any]:
        fields = ", ".join(dict.fromkeys(error["field"] for error in self.errors))
        return {"error": self.error, "message": f"Invalid input: {fields}", "errors": self.errors}


class Forbidden(ApiError):
    status_code = 403
    error = "forbidden"
    message = "Forbidden"


class NotFound(ApiError):
    status_code = 404
    error = "not_found"
    message = "Not found"


class MethodNotAllowed(ApiError):
    status_code = 405
    error = "method_not_allowed"
    message = "Method not allowed"


class Conflict(ApiError):
    status_code = 409
    error = "conflict"
    message = "The entry's state does not allow this"


class IdempotencyKeyInUse(Conflict):
    error = "idempotency_key_in_use"
    message = "A request with this Idempotency-Key is still being processed; retry later"


class IdempotencyKeyReused(ApiError):
    status_code = 422
    error = "idempotency_key_reused"
    message = "This Idempotency-Key was used for a different request"


class InvalidIdempotencyKey(ApiError):
    error = "invalid_idempotency_key"
    message = "Idempotency-Key must be 1 to 255 printable ASCII characters"


class PreconditionFailed(ApiError):
    status_code = 412
    error = "precondition_failed"
    message = "The entry has changed since it was read (If-Match does not match its ETag)"


class PayloadTooLarge(ApiError):
    status_code = 413
    error = "payload_too_large"
    message = "The request body is too large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    error = "unsupported_media_type"
    message = "Send application/json or application/x-www-form-urlencoded"


class ServiceUnavailable(ApiError):
    status_code = 503
    error = "service_unavailable"
    message = "The service is temporarily unavailable"
    retry_after: ClassVar[int] = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DatabaseUnavailable(ServiceUnavailable):
    error = "database_unavailable"
    message = "The database is temporarily unavailable"


class InternalError(ApiError):
    status_code = 500
    error = "internal_error"
    message = "Internal server error"
