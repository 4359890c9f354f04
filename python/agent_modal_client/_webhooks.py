"""Standard Webhooks signature verification for receivers."""

import base64
import hashlib
import hmac
import time
from typing import Mapping, Union


class WebhookVerificationError(Exception):
    """The delivery is not signed by the secret, or is too old."""


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: Union[bytes, str],
    tolerance_s: int = 300,
    now: Union[int, None] = None,
) -> None:
    """Checks a delivery's `webhook-signature` against `secret` (the
    `whsec_...` value returned at registration) and that its
    `webhook-timestamp` is within `tolerance_s` of now; raises
    `WebhookVerificationError` otherwise. Deduplicate on `webhook-id`."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        signatures = lower["webhook-signature"]
    except (KeyError, ValueError) as e:
        raise WebhookVerificationError(f"missing or malformed webhook header: {e}") from None
    now = int(time.time()) if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError("timestamp outside the tolerance")
    key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
    payload = body.encode() if isinstance(body, str) else body
    signed = f"{message_id}.{timestamp}.".encode() + payload
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise WebhookVerificationError("no signature matches")
