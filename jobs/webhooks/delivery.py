"""One delivery attempt of a webhook event, signed as Standard Webhooks (and OpenAI) sign.

    webhook-id:        the event id (the same on every attempt: receivers de-duplicate by it)
    webhook-timestamp: this attempt's Unix time
    webhook-signature: "v1," + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}"))

Redirects are not followed (a redirect could lead anywhere, the checks of jobs/webhooks/urls.py
apply to the URL the tenant named), and any answer but a 2xx counts as a failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from jobs.errors import JobsError
from jobs.webhooks.events import WebhookEvent
from jobs.webhooks.settings import WebhookSettings
from jobs.webhooks.urls import check_webhook_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Attempt:
    delivered: bool
    retry: bool  # False: no later attempt can succeed (a URL no longer allowed)
    detail: str


def signed_headers(event: WebhookEvent, secret: str, now: datetime) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id=event.id, timestamp=now, data=event.body)
    return {
        "webhook-id": event.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "kvbatch-webhooks/1",
    }


def deliver(event: WebhookEvent, settings: WebhookSettings) -> Attempt:
    """POST the event once; never raises for the receiver's or the network's failures."""
    secret = settings.webhook_secrets.get(event.tenant)
    if secret is None:
        return Attempt(False, False, "the tenant has no webhook secret any more")
    try:
        check_webhook_url(event.url, settings)
    except JobsError as exc:
        return Attempt(False, False, exc.message)
    headers = signed_headers(event, secret, datetime.now(UTC))
    try:
        response = httpx.post(
            event.url,
            content=event.body.encode(),
            headers=headers,
            follow_redirects=False,
            timeout=settings.webhook_timeout_s,
        )
    except httpx.HTTPError as exc:
        return Attempt(False, True, f"{type(exc).__name__}: {exc}")
    if response.is_success:
        return Attempt(True, False, str(response.status_code))
    return Attempt(False, True, f"HTTP {response.status_code}")
