"""The core both clients share, free of I/O: requests as `Op` values (what
to send and how to read the answer), configuration, retries, error mapping
and the parsing of followed logs. `Client` (httpx.Client) and `AsyncClient`
(httpx.AsyncClient) only send what this module describes.

Work of several requests (waits, maps) is written once as a *flow*: a
generator that yields an `Op` and is sent back what the op returned (or
has the op's error raised where it yielded, so that it can clean up), or
yields an `Emit` whose value the iterator hands to its caller. Each client
drives flows with its own transport (`_drive` and `_iterate`).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    Generic,
    List,
    Literal,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import quote

import httpx

from ._errors import APIError, ServerUnreachableError, error_for

T = TypeVar("T")
R = TypeVar("R")

#: Where the server is when neither the argument nor MODAL_AGENTS_URL says.
DEFAULT_URL = "http://127.0.0.1:8080"
#: The user agent both clients send.
USER_AGENT = "agent-modal-client/0.2"


@dataclass(frozen=True)
class Op(Generic[T]):
    """One request and how to read its answer. An answer of 400 or more
    raises its typed error unless its status is in `allow`, in which case
    `parse` reads it too. `timeout` (seconds, or None for none) replaces the
    client's for a request the server answers late on purpose (a wait)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Optional[Mapping[str, Any]] = None
    json: Any = None
    content: Optional[bytes] = None
    headers: Optional[Mapping[str, str]] = None
    allow: Tuple[int, ...] = ()
    timeout: Union[float, None, Literal["default"]] = "default"

    def request(self) -> Dict[str, Any]:
        """Keyword arguments of `httpx.Client.request` (and the async one)."""
        kwargs: Dict[str, Any] = {"method": self.method, "url": self.path}
        if self.params is not None:
            kwargs["params"] = dict(self.params)
        if self.json is not None:
            kwargs["json"] = self.json
        if self.content is not None:
            kwargs["content"] = self.content
        if self.headers:
            kwargs["headers"] = dict(self.headers)
        if self.timeout != "default":
            kwargs["timeout"] = self.timeout
        return kwargs

    def finish(self, response: httpx.Response) -> T:
        """The parsed answer, or the typed error it stands for."""
        if response.status_code >= 400 and response.status_code not in self.allow:
            raise error_for(response)
        return self.parse(response)


@dataclass(frozen=True)
class Emit(Generic[T]):
    """A value a flow hands to the caller of its iterator."""

    value: T


#: A flow emitting values of type T and returning R (see the module's doc).
Flow = Generator[Union[Op[Any], Emit[T]], Any, R]


def method_signature(op: Callable[..., Any]) -> inspect.Signature:
    """The signature of a client method made from `op` (for `help`): `self`,
    then the op's parameters, returning what the op's answer parses to."""
    signature = inspect.signature(op)
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Op[") and returns.endswith("]"):
        returns = returns[3:-1]
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    return signature.replace(parameters=[this, *signature.parameters.values()], return_annotation=returns)


# Reading answers.


def as_json(response: httpx.Response) -> Any:
    return response.json()


def as_dict(response: httpx.Response) -> Dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise APIError(response.status_code, {"title": "unexpected answer", "detail": str(body)[:200]})
    return body


def as_list(response: httpx.Response) -> List[Any]:
    body = response.json()
    if not isinstance(body, list):
        raise APIError(response.status_code, {"title": "unexpected answer", "detail": str(body)[:200]})
    return body


def as_bytes(response: httpx.Response) -> bytes:
    return response.content


def as_response(response: httpx.Response) -> httpx.Response:
    return response


def seg(value: object) -> str:
    """One path segment, quoted."""
    return quote(str(value), safe="")


def subpath(path: str) -> str:
    """A `/`-separated path inside a volume or sandbox, quoted."""
    return quote(path.lstrip("/"), safe="/")


def drop_none(body: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


#: Time given to an answer beyond the server-side wait it holds.
WAIT_MARGIN_S = 30.0


def wait_request_timeout(wait: bool, seconds: Optional[float]) -> Union[float, None, Literal["default"]]:
    """The request timeout of a request holding a server-side wait of
    `seconds` (None: as long as the task takes)."""
    if not wait:
        return "default"
    return None if seconds is None else seconds + WAIT_MARGIN_S


# Configuration, connection failures and retries.


def resolve(api_url: Optional[str], token: Optional[str]) -> Tuple[str, Dict[str, str]]:
    """The base URL and headers: the arguments, else MODAL_AGENTS_URL and
    MODAL_AGENTS_TOKEN (the CLI's variables), else a local server."""
    url = api_url or os.environ.get("MODAL_AGENTS_URL") or DEFAULT_URL
    if token is None:
        token = os.environ.get("MODAL_AGENTS_TOKEN")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"api_url must be an http(s) URL, got {url!r}")
    headers = {"user-agent": USER_AGENT}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return url.rstrip("/"), headers


#: The errors that mean the server could not be reached at all.
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


def unreachable(base_url: object, error: Exception) -> ServerUnreachableError:
    return ServerUnreachableError(
        f"cannot reach the modal-agents server at {base_url} ({error}); "
        "is it running? MODAL_AGENTS_URL (or api_url) says where it is"
    )


@dataclass
class Retry:
    """Retries of one request answered 429 or 503: `after(response)` is the
    seconds to wait before the next attempt (honouring `Retry-After`, at
    most 60), or None to take this answer."""

    max_retries: int
    attempts: int = 0
    delay: float = 0.1

    def after(self, response: httpx.Response) -> Optional[float]:
        if response.status_code not in (429, 503) or self.attempts >= self.max_retries:
            return None
        self.attempts += 1
        retry_after = response.headers.get("retry-after", "")
        wait = min(float(retry_after), 60.0) if retry_after.isdigit() else self.delay
        self.delay = min(self.delay * 2, 10.0)
        return wait


# Following a task's logs (`GET /tasks/{id}/logs?follow=true`).


@dataclass
class LogFollower:
    """Turns the Server-Sent Events of a followed task's logs into lines
    (without their line ends; a last line without one comes at the end).
    `stream` keeps only `stdout` or `stderr`. Knows the last event's id so
    that a dropped stream resumes where it stopped (`Last-Event-ID`)."""

    task_id: str
    stream: Optional[str] = None
    max_reconnects: int = 5
    done: bool = False
    status: Optional[str] = None
    last_id: Optional[str] = None
    reconnects: int = 0
    _event: Optional[str] = None
    _id: Optional[str] = None
    _data: List[str] = field(default_factory=list)
    _partial: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stream not in (None, "stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout', 'stderr' or None, got {self.stream!r}")

    def request(self) -> Dict[str, Any]:
        headers = {"last-event-id": self.last_id} if self.last_id else {}
        return {
            "method": "GET",
            "url": f"/tasks/{seg(self.task_id)}/logs",
            "params": {"follow": "true"},
            "headers": headers,
            # A quiet task sends nothing for a while: no read timeout.
            "timeout": httpx.Timeout(30.0, read=None),
        }

    def feed(self, line: str) -> List[str]:
        """One line of the event stream; the log lines it completes."""
        if line.startswith("event:"):
            self._event = line[6:].strip()
        elif line.startswith("id:"):
            self._id = line[3:].strip()
        elif line.startswith("data:"):
            self._data.append(line[5:].lstrip(" "))
        elif line == "":
            return self._dispatch()
        return []

    def _dispatch(self) -> List[str]:
        event, data, event_id = self._event, "\n".join(self._data), self._id
        self._event, self._id, self._data = None, None, []
        if event == "end":
            self.done = True
            self.status = data.strip().strip('"') or None
            return self.finish()
        if event not in ("stdout", "stderr"):
            return []
        if event_id:
            self.last_id = event_id
        if self.stream is not None and event != self.stream:
            return []
        text = json.loads(data) if data.startswith('"') else data
        lines = (self._partial.pop(event, "") + text).split("\n")
        if lines[-1]:
            self._partial[event] = lines[-1]
        return lines[:-1]

    def finish(self) -> List[str]:
        """What is left without a line end, once the stream is over."""
        rest = [text for text in self._partial.values() if text]
        self._partial.clear()
        return rest

    def dropped(self, error: Exception) -> None:
        """The stream broke before its end: reconnect (from `last_id`), or
        raise once that happened `max_reconnects` times."""
        self.reconnects += 1
        self._event, self._id, self._data = None, None, []
        if self.reconnects > self.max_reconnects:
            raise error


def make_progress_bar(total: Optional[int], description: str) -> Any:
    """A tqdm bar when tqdm is installed (the `progress` extra), else None."""
    try:
        import importlib

        auto = importlib.import_module("tqdm.auto")
    except ImportError:
        return None
    return auto.tqdm(total=total, desc=description, unit="input")
