"""Which URLs a webhook may call: http(s) only, allowed hosts only, public addresses only.

A webhook URL is chosen by a tenant, and the service calls it from inside the deployment:
without these checks it would reach internal services (Redis, metadata endpoints). The
check runs when a batch names its URL (a 400 then) and again before every delivery, since
a name may resolve elsewhere by then; redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from jobs.errors import JobsError
from jobs.webhooks.settings import WebhookSettings

PARAM = "metadata.webhook_url"


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise JobsError(f"webhook host {host!r} does not resolve", param=PARAM) from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def check_webhook_url(url: str, settings: WebhookSettings) -> str:
    """``url`` if the service may call it; raises :class:`JobsError` (a 400) otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise JobsError(f"webhook URL is malformed: {exc}", param=PARAM) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobsError("a webhook URL must be an http:// or https:// URL", param=PARAM)
    if parts.username or parts.password:
        raise JobsError("a webhook URL may not carry credentials", param=PARAM)
    host = parts.hostname
    allowed = settings.webhook_allowed_hosts
    if allowed and host not in allowed:
        raise JobsError(f"webhook host {host!r} is not in the allowed hosts", param=PARAM)
    if not settings.webhook_allow_private:
        for address in _addresses(host, port):
            if not address.is_global:
                raise JobsError(
                    f"webhook host {host!r} resolves to a non-public address", param=PARAM
                )
    return url


def check_batch_webhook(
    metadata: dict[str, str] | None, tenant: str, settings: WebhookSettings
) -> None:
    """A batch's own ``metadata.webhook_url``: allowed by settings, signed, and callable."""
    url = (metadata or {}).get("webhook_url")
    if url is None:
        return
    if not settings.webhook_metadata_url:
        raise JobsError("this service takes no per-batch webhook URL", param=PARAM)
    if tenant not in settings.webhook_secrets:
        raise JobsError("no webhook secret is configured for this tenant", param=PARAM)
    check_webhook_url(url, settings)
