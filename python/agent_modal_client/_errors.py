"""Typed errors carrying the API's problem+json fields."""

import builtins
import json
from typing import Any, Dict, Optional, Type

import httpx


class ModalAgentError(httpx.HTTPError):
    """Every error of this client (an `httpx.HTTPError`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


#: Most bytes of an error answer that is not JSON kept as its `detail`.
MAX_ERROR_TEXT = 64 << 10


def _text(value: Any) -> Optional[str]:
    """A text field of a server's answer as a string (None when absent;
    JSON when it is not a string)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=repr)


class APIError(ModalAgentError):
    """The server answered with a problem document (RFC 9457)."""

    def __init__(self, status: int, problem: Dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type: Optional[str] = _text(problem.get("type"))
        self.title: str = _text(problem.get("title")) or "error"
        self.detail: str = _text(problem.get("detail")) or ""
        self.field: Optional[str] = _text(problem.get("field"))
        where = f" (field `{self.field}`)" if self.field else ""
        super().__init__(f"{status} {self.title}: {self.detail}{where}")


class AuthenticationError(APIError):
    """401: no token, or a wrong one."""


class NotFoundError(APIError):
    """404: no such function, task, webhook, secret or key."""


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
    """A task (or one input of a map) ended without completing.

    `type`, `message` and `traceback` are the remote error's (the Python
    exception's type name such as `ValueError`, or a runtime kind such as
    `Cancelled`; `traceback` is None when there is none). `record` is the
    task's record, `task_id` its id, `status` its status, and `index` the
    input's position when one input of a map failed."""

    def __init__(
        self,
        record: Dict[str, Any],
        *,
        error: Optional[Dict[str, Any]] = None,
        index: Optional[int] = None,
    ) -> None:
        self.record = record
        self.task_id: Optional[str] = _text(record.get("task_id"))
        self.status: Optional[str] = _text(record.get("status"))
        self.index = index
        err = error if error is not None else record.get("error")
        if not isinstance(err, dict):
            err = {}
        self.type: str = _text(err.get("type")) or str(self.status or "Error")
        self.message: str = _text(err.get("message")) or ""
        self.traceback: Optional[str] = _text(err.get("traceback"))
        # The seed client's names for the same.
        self.error_type = self.type
        self.error_message = self.message
        where = f"task {self.task_id} {self.status}"
        if index is not None:
            where = f"input {index} of map {self.task_id} failed"
        text = f"{where}: {self.type}: {self.message}"
        if self.traceback:
            text += "\n\nRemote traceback:\n" + self.traceback.rstrip()
        super().__init__(text)


class TimeoutError(ModalAgentError, builtins.TimeoutError):  # noqa: A001
    """A wait ran out of time; the task goes on. Also the builtin
    `TimeoutError`, so `except TimeoutError` catches it either way."""


class FunctionTimeoutError(TaskFailedError, builtins.TimeoutError):
    """A task that failed with a `TimeoutError` (the function ran past its
    `timeout` and was killed, or raised `TimeoutError` itself): both a
    `TaskFailedError` and the builtin `TimeoutError`."""


class ServerUnreachableError(ModalAgentError):
    """The server could not be reached at all; the message names the URL
    (and `MODAL_AGENTS_URL`, which sets it)."""


def task_failed(
    record: Dict[str, Any], error: Optional[Dict[str, Any]] = None, index: Optional[int] = None
) -> TaskFailedError:
    """The error for a failed task or map input: `FunctionTimeoutError` when
    the remote error is a `TimeoutError`, else `TaskFailedError`."""
    err = error if error is not None else record.get("error")
    timed_out = isinstance(err, dict) and err.get("type") == "TimeoutError"
    kind = FunctionTimeoutError if timed_out else TaskFailedError
    return kind(record, error=error, index=index)


_BY_STATUS: Dict[int, Type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    412: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


def error_for(response: httpx.Response) -> APIError:
    """The typed error for an answer of 400 or more."""
    problem: Dict[str, Any]
    try:
        body = json.loads(response.content)
        problem = body if isinstance(body, dict) else {"detail": body}
    except (ValueError, RecursionError):
        problem = {"detail": response.content[:MAX_ERROR_TEXT].decode("utf-8", "replace")}
    default = ServerError if response.status_code >= 500 else APIError
    return _BY_STATUS.get(response.status_code, default)(response.status_code, problem)
