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

import email.utils
import inspect
import json
import os
import re
import time
import uuid
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
    Type,
    TypeVar,
    Union,
)
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ._errors import APIError, ServerUnreachableError, error_for

T = TypeVar("T")
R = TypeVar("R")

#: Where the server is when neither the argument nor MODAL_AGENTS_URL says.
DEFAULT_URL = "http://127.0.0.1:8080"
#: The user agent both clients send.
USER_AGENT = "agent-modal-client/0.2"
#: Most bytes of one answer the clients read (80 MiB: a task's result is at
#: most 64 MiB, and comes inside its record); a larger answer is an
#: `APIError`, read no further than this.
MAX_ANSWER_BYTES = 80 << 20
#: Most bytes of a file's content read (`file_get`, a sandbox's
#: `read_file`): the server's largest file (256 MiB).
MAX_FILE_BYTES = 256 << 20
#: Longest line of an event stream (followed logs, a sandbox process's
#: output) and most data of one event (1 MiB; the server sends at most
#: 64 KiB of text an event): longer is an `APIError`.
MAX_EVENT_BYTES = 1 << 20
#: Longest log line `follow_logs` holds while it has no line end (16 Mi
#: characters, the most the server keeps of a stream): a longer one is
#: yielded in pieces of this length.
MAX_LOG_LINE_CHARS = 16 << 20
#: Request timeout (seconds) of what is sent to stop work left behind (an
#: abandoned map's cancellations).
CLEANUP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Op(Generic[T]):
    """One request and how to read its answer. An answer of 400 or more
    raises its typed error unless its status is in `allow`, in which case
    `parse` reads it too. `timeout` (seconds, or None for none) replaces the
    client's for a request the server answers late on purpose (a wait).
    At most `max_bytes` of the answer are read (else `APIError`)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Optional[Mapping[str, Any]] = None
    json: Any = None
    content: Optional[bytes] = None
    headers: Optional[Mapping[str, str]] = None
    allow: Tuple[int, ...] = ()
    timeout: Union[float, None, Literal["default"]] = "default"
    #: Most bytes of the answer read (`MAX_ANSWER_BYTES` unless said).
    max_bytes: int = MAX_ANSWER_BYTES

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


class Abandoned(Exception):
    """Thrown into a flow whose caller left it before its end (an iterator
    closed or garbage-collected, a KeyboardInterrupt, a cancelled task): the
    flow yields the ops that stop what it started (their answers, or
    errors, are sent back as usual) and then raises it again (or ends)."""


def idempotency_key() -> str:
    """A fresh `Idempotency-Key`: the same request sent again under it is
    answered with the first one's answer (the same task), not run twice."""
    return f"amc-{uuid.uuid4().hex}"


def flow_suspended(flow: Generator[Any, Any, Any]) -> bool:
    """Whether `flow` stopped at a yield (and so can be told it is left)."""
    return inspect.getgeneratorstate(flow) == inspect.GEN_SUSPENDED


def no_answer(method: str, path: str, why: str, status: int = 200) -> APIError:
    """The error of an answer the client cannot use (the server is not the
    modal-agents API it expects, or misbehaves)."""
    return APIError(status, {"title": "unexpected answer", "detail": f"{method} {path}: {why}"})


class BodyReader:
    """Reads one answer's body, at most `limit` bytes (decoded): a larger
    one (by its `Content-Length`, or as it comes) raises `APIError` before
    more is read. `response()` is the answer with its body read."""

    def __init__(self, response: httpx.Response, limit: int) -> None:
        self._response = response
        self._limit = limit
        self._parts: List[bytes] = []
        self._size = 0
        declared = response.headers.get("content-length", "")
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        if not encoded and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise self._too_large()

    def _too_large(self) -> APIError:
        request = self._response.request
        return no_answer(request.method, request.url.path,
                         f"the answer is over {self._limit} bytes, the most this client reads",
                         self._response.status_code)

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            raise self._too_large()
        self._parts.append(chunk)

    def response(self) -> httpx.Response:
        original = self._response
        # The body as read (decoded): without the encoding it came in.
        headers = [(k, v) for k, v in original.headers.multi_items() if k.lower() != "content-encoding"]
        return httpx.Response(
            original.status_code,
            headers=headers,
            content=b"".join(self._parts),
            request=original.request,
            extensions=original.extensions,
        )


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


def _unexpected(response: httpx.Response, why: str) -> APIError:
    return no_answer(response.request.method, response.request.url.path, why, response.status_code)


def _clip(value: object, at: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= at else text[: at - 3] + "..."


def as_json(response: httpx.Response) -> Any:
    """The answer's JSON; `APIError` when it is not JSON."""
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError) as e:
        raise _unexpected(response, f"the answer is not JSON ({e}): {_clip(response.content[:200])}") from None


def as_dict(response: httpx.Response) -> Dict[str, Any]:
    body = as_json(response)
    if not isinstance(body, dict):
        raise _unexpected(response, f"expected a JSON object, got {_clip(body)}")
    return body


def as_list(response: httpx.Response) -> List[Any]:
    body = as_json(response)
    if not isinstance(body, list):
        raise _unexpected(response, f"expected a JSON array, got {_clip(body)}")
    return body


#: What a field of an answer must be: a type, or a tuple of them (with
#: `type(None)` for a field that may be null).
Kind = Union[Type[Any], Tuple[Type[Any], ...]]


def _kind_name(kind: Kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "an array",
             dict: "an object", type(None): "null", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def check_fields(
    response: httpx.Response,
    body: Dict[str, Any],
    required: Mapping[str, Kind],
    optional: Mapping[str, Kind],
) -> Dict[str, Any]:
    """`body`, once its `required` fields are there and they and its
    `optional` ones (when there) are of their kinds; else `APIError`."""
    for name, kind in [*required.items(), *optional.items()]:
        if name not in body:
            if name in required:
                raise _unexpected(response, f"the answer has no `{name}`: {_clip(body)}")
            continue
        value = body[name]
        wrong_bool = isinstance(value, bool) and kind in (int, float)
        if wrong_bool or not isinstance(value, kind):
            raise _unexpected(response, f"`{name}` is {_clip(value, 60)}, expected {_kind_name(kind)}")
    return body


def as_object(
    required: Optional[Mapping[str, Kind]] = None, optional: Optional[Mapping[str, Kind]] = None
) -> Callable[[httpx.Response], Dict[str, Any]]:
    """Reads a JSON object whose fields are checked (`check_fields`)."""

    def parse(response: httpx.Response) -> Dict[str, Any]:
        return check_fields(response, as_dict(response), required or {}, optional or {})

    return parse


def as_bytes(response: httpx.Response) -> bytes:
    return response.content


def as_response(response: httpx.Response) -> httpx.Response:
    return response


def seg(value: object) -> str:
    """One path segment, quoted."""
    return quote(str(value), safe="")


def subpath(path: str, keep_root: bool = False) -> str:
    """A `/`-separated key or path inside a volume (or, `keep_root`, a
    sandbox, where a leading `/` makes it absolute), each segment quoted.
    A `.` or `..` segment raises `ValueError`: the URL would resolve it on
    the way and the request would reach another key or volume."""
    parts = path.split("/")
    if any(part in (".", "..") for part in parts):
        raise ValueError(f"invalid path {path[:128]!r}: '.' and '..' segments are not allowed "
                         "(write the path without them)")
    quoted = "/".join(quote(part, safe="") for part in parts)
    return quoted if keep_root else quoted.lstrip("/")


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


def shown_url(url: str) -> str:
    """`url` as the clients show it (in `repr` and errors): without its
    userinfo (`user:password@`), query and fragment, which may hold
    secrets."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<an unparsable URL>"


def _character(c: str) -> str:
    """A character of a refused token, named without showing the token."""
    names = {"\n": "a line feed (\\n)", "\r": "a carriage return (\\r)", "\0": "a NUL (\\0)",
             "\t": "a tab (\\t)", " ": "a space"}
    if c in names:
        return names[c]
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"a control character (U+{ord(c):04X})"
    return "a non-ASCII character"


def check_token(token: str, source: str) -> None:
    """Refuses a token that cannot be sent in an `Authorization` header:
    only visible ASCII characters (`!` to `~`) are allowed, no whitespace
    or control characters. The error says which character and where, never
    the token."""
    for at, c in enumerate(token):
        if not ("!" <= c <= "~"):
            where = "at its end" if at == len(token) - 1 else f"at position {at} of {len(token)}"
            hint = ("; a token read from a file often ends with a line end: strip it"
                    if c in "\r\n" and not token[at:].strip() else "")
            raise ValueError(
                f"the token ({source}) has {_character(c)} {where}: a token may hold only visible "
                f"ASCII characters (! to ~), no whitespace, control or non-ASCII characters{hint}"
            )


def resolve(api_url: Optional[str], token: Optional[str]) -> Tuple[str, Dict[str, str]]:
    """The base URL and headers: the arguments, else MODAL_AGENTS_URL and
    MODAL_AGENTS_TOKEN (the CLI's variables), else a local server. A token
    with a character a header cannot carry is refused (`ValueError`)."""
    url = api_url or os.environ.get("MODAL_AGENTS_URL") or DEFAULT_URL
    source = "token="
    if token is None:
        token = os.environ.get("MODAL_AGENTS_TOKEN")
        source = "MODAL_AGENTS_TOKEN"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"api_url must be an http(s) URL, got {shown_url(url)!r}")
    headers = {"user-agent": USER_AGENT}
    if token:
        check_token(token, source)
        headers["authorization"] = f"Bearer {token}"
    return url.rstrip("/"), headers


#: The errors that mean the server could not be reached at all.
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


def unreachable(base_url: str, error: Exception) -> ServerUnreachableError:
    why = str(error)
    secret = urlsplit(base_url).netloc.rpartition("@")[0]
    if secret:
        why = why.replace(secret, "***")
    return ServerUnreachableError(
        f"cannot reach the modal-agents server at {shown_url(base_url)} ({why}); "
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
        told = retry_after(response.headers.get("retry-after", ""))
        wait = self.delay if told is None else told
        self.delay = min(self.delay * 2, 10.0)
        return wait


#: The longest pause a `Retry-After` is honoured for.
MAX_RETRY_AFTER_S = 60.0


def retry_after(value: str, now: Optional[float] = None) -> Optional[float]:
    """The seconds a `Retry-After` asks for (at most 60): ASCII digits
    (delay-seconds) or an HTTP-date (IMF-fixdate, `Sun, 06 Nov 1994
    08:49:37 GMT`); None for anything else (the default backoff then)."""
    value = value.strip(" \t")
    if re.fullmatch(r"[0-9]+", value):
        return MAX_RETRY_AFTER_S if len(value) > 6 else min(float(int(value)), MAX_RETRY_AFTER_S)
    if not re.fullmatch(r"[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT", value):
        return None
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None
    left = when - (time.time() if now is None else now)
    return max(0.0, min(left, MAX_RETRY_AFTER_S))


class LineSplitter:
    """Splits the bytes of an event stream into lines (ended by LF, CRLF or
    CR), each at most `limit` bytes: a longer one raises `APIError` before
    more of it is kept."""

    def __init__(self, what: str, limit: int = MAX_EVENT_BYTES) -> None:
        self._what = what
        self._limit = limit
        self._rest = bytearray()
        self._skip_lf = False

    def _check(self, size: int) -> None:
        if size > self._limit:
            raise APIError(200, {"title": "unexpected answer",
                                 "detail": f"{self._what}: a line of the event stream is over "
                                           f"{self._limit} bytes"})

    def feed(self, chunk: bytes) -> List[str]:
        if not chunk:
            return []
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        lines: List[str] = []
        parts = chunk.splitlines(keepends=True)
        for part in parts:
            if part.endswith((b"\n", b"\r")):
                ended = part[:-2] if part.endswith(b"\r\n") else part[:-1]
                self._check(len(self._rest) + len(ended))
                line = bytes(self._rest) + ended
                self._rest = bytearray()
                lines.append(line.decode("utf-8", "replace"))
            else:
                self._check(len(self._rest) + len(part))
                self._rest += part
        self._skip_lf = bool(parts) and parts[-1].endswith(b"\r")
        return lines

    def end(self) -> List[str]:
        """The last line, when the stream ended without its line end."""
        rest, self._rest = bytes(self._rest), bytearray()
        return [rest.decode("utf-8", "replace")] if rest else []


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
    _data_size: int = 0
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
        """One line of the event stream; the log lines it completes. An
        event of more than `MAX_EVENT_BYTES` of data, or whose text is not
        a JSON string, is an `APIError`."""
        if line.startswith("event:"):
            self._event = line[6:].strip()
        elif line.startswith("id:"):
            value = line[3:].strip()
            # An id a header cannot carry back is ignored (as SSE ignores
            # one with a NUL).
            self._id = value if all(" " <= c <= "~" for c in value) else None
        elif line.startswith("data:"):
            self._data.append(line[5:].lstrip(" "))
            self._data_size += len(self._data[-1]) + 1
            if self._data_size > MAX_EVENT_BYTES:
                raise self._bad(f"an event carries over {MAX_EVENT_BYTES} bytes of data")
        elif line == "":
            return self._dispatch()
        return []

    def _bad(self, why: str) -> APIError:
        return APIError(200, {"title": "unexpected answer",
                              "detail": f"the logs of task {self.task_id}: {why}"})

    def _dispatch(self) -> List[str]:
        event, data, event_id = self._event, "\n".join(self._data), self._id
        self._event, self._id, self._data, self._data_size = None, None, [], 0
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
        text = data
        if data.startswith('"'):
            try:
                decoded = json.loads(data)
            except (ValueError, RecursionError):
                decoded = None
            if not isinstance(decoded, str):
                raise self._bad(f"a {event} event's data is not a JSON string: {_clip(data, 80)}")
            text = decoded
        lines = (self._partial.pop(event, "") + text).split("\n")
        rest = lines.pop()
        while len(rest) > MAX_LOG_LINE_CHARS:
            # A line without an end for this long: yielded in pieces.
            lines.append(rest[:MAX_LOG_LINE_CHARS])
            rest = rest[MAX_LOG_LINE_CHARS:]
        if rest:
            self._partial[event] = rest
        return lines

    def finish(self) -> List[str]:
        """What is left without a line end, once the stream is over."""
        rest = [text for text in self._partial.values() if text]
        self._partial.clear()
        return rest

    def dropped(self, error: Exception) -> None:
        """The stream broke before its end: reconnect (from `last_id`), or
        raise once that happened `max_reconnects` times."""
        self.reconnects += 1
        self._event, self._id, self._data, self._data_size = None, None, [], 0
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
