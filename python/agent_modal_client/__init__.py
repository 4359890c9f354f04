"""Python client of the modal-agents API.

Synchronous, with Modal-style function handles (with no arguments the
client talks to `MODAL_AGENTS_URL` with `MODAL_AGENTS_TOKEN`):

    from agent_modal_client import Client

    def double(x):
        return x * 2

    with Client() as client:
        f = client.deploy(double)              # sends its source; a Function
        f.remote(21)                           # 42
        call = f.spawn(4); call.get(timeout=60)
        for value in f.map(range(1000), progress=True):   # lazily, in input order
            ...
        list(f.map(range(10), order_outputs=False))       # as they finish
        add = client.function("add")
        list(add.starmap([(1, 2), (3, 4)]))               # add(*input): one map
        list(add.starmap([{"a": 1}, {"a": 2, "b": 3}]))   # add(**input): one map
        for line in client.follow_logs(call.id):          # as it prints
            print(line)
        client.run_code("print(6 * 7)")["stdout"]         # "42\n": nothing deployed
        client.call_tool("wait_tasks", {"task_ids": [call.id]})  # any agent tool

`AsyncClient` has the same methods to await (its `map` is an async
iterator), and `ModalAgentClient` is the seed's async client, unchanged:

    async with ModalAgentClient(api_url="http://127.0.0.1:8080", token="...") as client:
        await client.deploy_function(function_code="def f(x): return x * 2", function_name="f")
        result = await client.run_parallel(function_name="f", inputs=[1, 2, 3], wait=True)

Also: secrets (`create_secret`, `list_secrets`, `delete_secret`), volumes
(`volume_get/put/delete/list` for versioned keys, `file_put/get/delete/list`,
`list_volumes`; the listings read every page, `iter_volume_list` and
`iter_file_list` lazily, `volume_list_page` and `file_list_page` one page),
tasks (`wait`, `wait_tasks`, `cancel`, `logs`,
`iter_results`, `list_tasks`) and, on the async clients, sandboxes.

Names of results: one call's value is `result`; a map's values are `results`
(`run_parallel(wait=True)`, `get_results` pages); only the seed's
`get_task_status` of a finished map keeps them in `result`, as the seed did.

Errors raise. A failed call raises `TaskFailedError` with the remote `type`,
`message` and `traceback` (`FunctionTimeoutError`, also a builtin
`TimeoutError`, when that type is `TimeoutError`); a wait past its timeout
raises `agent_modal_client.TimeoutError`, a subclass of the builtin; a server
that cannot be reached raises `ServerUnreachableError` naming the URL
(without its `user:password@`, query or fragment, which `repr` leaves out
too); an error answer raises an `APIError` subclass carrying the
problem+json fields (status, title, detail, field). All subclass
`httpx.HTTPError`. Requests answered 429 or 503 are retried with backoff,
honouring `Retry-After` (ASCII digits or an HTTP-date, at most 60 s).

The server is not trusted: an answer is read up to 80 MiB (a task's result
is at most 64 MiB; a file up to 256 MiB), a line of a followed event stream
up to 1 MiB, and an answer over that, one that is not JSON or lacks what the
API answers with, or a malformed event stream raises `APIError`. A token
(`token`, `MODAL_AGENTS_TOKEN`) with a character a header cannot carry
(whitespace such as a trailing line end, a control or non-ASCII character)
is refused when the client is made, with a `ValueError` that does not show
it.

Work is not left running behind the caller: a map whose iterator is closed
or garbage-collected before its end (`break`, an exception in the loop),
whose iteration is interrupted (KeyboardInterrupt, a cancelled task) or
that raises is cancelled, and so is the call of an interrupted `remote()`;
closing a client closes the map iterators it handed out. Requests that
start work carry an `Idempotency-Key`, so that work whose answer was lost
to an interruption is found and cancelled too.

A map is sent in chunks of at most 10,000 inputs and 16 MiB of them as JSON
(the server takes 32 MiB a request; a chunk it still refuses as too large
is sent in halves).
"""

from ._async import AsyncClient, AsyncFunction, AsyncFunctionCall
from ._client import ModalAgentClient, StatusMonitor
from ._errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    FunctionTimeoutError,
    ModalAgentError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServerUnreachableError,
    TaskFailedError,
    TimeoutError,
    ValidationError,
)
from ._sandbox import Sandbox, SandboxProcess, SyncSandbox, SyncSandboxProcess
from ._sync import Client, Function, FunctionCall
from ._webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncFunction",
    "AsyncFunctionCall",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Function",
    "FunctionCall",
    "FunctionTimeoutError",
    "ModalAgentClient",
    "ModalAgentError",
    "NotFoundError",
    "RateLimitError",
    "Sandbox",
    "SandboxProcess",
    "SyncSandbox",
    "SyncSandboxProcess",
    "ServerError",
    "ServerUnreachableError",
    "StatusMonitor",
    "TaskFailedError",
    "TimeoutError",
    "ValidationError",
    "WebhookVerificationError",
    "verify_webhook",
]
