"""Typed errors carrying the API's problem+json fields."""

from typing import Any, Dict, Optional

import httpx


class ModalAgentError(httpx.HTTPError):
    """Every error of this client (an `httpx.HTTPError`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class APIError(ModalAgentError):
    """The server answered with a problem document (RFC 9457)."""

    def __init__(self, status: int, problem: Dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type = problem.get("type")
        self.title = problem.get("title") or "error"
        self.detail = problem.get("detail") or ""
        self.field: Optional[str] = problem.get("field")
        where = f" (field `{self.field}`)" if self.field else ""
        super().__init__(f"{status} {self.title}: {self.detail}{where}")


class AuthenticationError(APIError):
    """401: no token, or a wrong one."""


class NotFoundError(APIError):
    """404: no such function, task, webhook or key."""


class ConflictError(APIError):
    """409 or 412: the state is not what the request expects."""


class ValidationError(APIError):
    """422 (or 400): a field holds a value outside what is accepted; `field`
    names it and `detail` says what is accepted."""


class RateLimitError(APIError):
    """429, after the retries ran out."""


class ServerError(APIError):
    """5xx, after the retries ran out (for 503)."""


class TaskFailedError(ModalAgentError):
    """A waited-for task ended without completing."""

    def __init__(self, record: Dict[str, Any]) -> None:
        self.record = record
        error = record.get("error") or {}
        self.error_type = error.get("type")
        self.error_message = error.get("message")
        super().__init__(
            f"task {record.get('task_id')} {record.get('status')}: "
            f"{self.error_type}: {self.error_message}"
        )


import builtins


class TimeoutError(ModalAgentError, builtins.TimeoutError):  # noqa: A001
    """A wait ran out of time; the task goes on. Also the builtin
    `TimeoutError`, so `except TimeoutError` catches it either way."""


class ServerUnreachableError(ModalAgentError):
    """The server could not be reached at all; the message names the URL
    (and `MODAL_AGENTS_URL`, which sets it)."""


_BY_STATUS = {
    400: ValidationError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    412: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


def error_for(response: httpx.Response) -> APIError:
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            problem = {"detail": str(problem)}
    except ValueError:
        problem = {"detail": response.text}
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else APIError
    return kind(response.status_code, problem)
