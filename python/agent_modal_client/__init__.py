"""The seed's Python helper library for the modal-agents API.

    from agent_modal_client import ModalAgentClient

    async with ModalAgentClient(api_url="http://127.0.0.1:8080", token="...") as client:
        await client.deploy_function(function_code="def f(x): return x * 2", function_name="f")
        result = await client.run_parallel(function_name="f", inputs=[1, 2, 3], wait=True)

Errors are typed (`APIError` and its subclasses carry the problem+json
fields: status, title, detail, field) and subclass `httpx.HTTPError`, so the
seed's `except httpx.HTTPError` catches them. Requests answered 429 or 503
are retried with backoff, honouring `Retry-After`.
"""

from ._client import ModalAgentClient, StatusMonitor
from ._sandbox import Sandbox, SandboxProcess
from ._errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    ModalAgentError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServerUnreachableError,
    TaskFailedError,
    TimeoutError,
    ValidationError,
)
from ._webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConflictError",
    "ModalAgentClient",
    "ModalAgentError",
    "NotFoundError",
    "RateLimitError",
    "Sandbox",
    "SandboxProcess",
    "ServerError",
    "ServerUnreachableError",
    "StatusMonitor",
    "TaskFailedError",
    "TimeoutError",
    "ValidationError",
    "WebhookVerificationError",
    "verify_webhook",
]
