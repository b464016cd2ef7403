"""Webhook settings, shared by the API (checks URLs at create) and the worker (delivers).

``KVBATCH_WEBHOOK_URLS`` and ``KVBATCH_WEBHOOK_SECRETS`` are JSON objects keyed by tenant;
a secret is Standard Webhooks' ``whsec_<base64>``. A tenant without a secret gets no
webhooks (an unsigned event could be forged by anyone who learns the URL).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from standardwebhooks.webhooks import Webhook

DAY_S = 24 * 3600


class WebhookSettings(BaseModel):
    """The ``webhooks`` section of the settings (jobs/settings.py)."""

    model_config = ConfigDict(extra="ignore")

    webhook_urls: dict[str, str] = Field(default_factory=dict)  # tenant -> endpoint
    webhook_secrets: dict[str, str] = Field(default_factory=dict)  # tenant -> whsec_...
    # Hosts a webhook may call; empty: any host that resolves to public addresses only.
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    # Loopback and private ranges stay out of reach unless this is set (a test receiver).
    webhook_allow_private: bool = False
    # Whether a batch may name its own endpoint in ``metadata.webhook_url``.
    webhook_metadata_url: bool = False
    # At least once: failed deliveries are retried with backoff for this long.
    webhook_retry_for_s: float = Field(default=26 * 3600, ge=DAY_S)
    webhook_backoff_s: float = Field(default=5.0, gt=0)
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_poll_s: float = Field(default=5.0, gt=0)  # how often ended batches are looked for

    @field_validator("webhook_secrets")
    @classmethod
    def _check_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant, secret in value.items():
            try:
                Webhook(secret)
            except Exception as exc:
                raise ValueError(f"webhook secret of {tenant!r} is not whsec_<base64>") from exc
        return value

    @model_validator(mode="after")
    def _urls_have_secrets(self) -> WebhookSettings:
        unsigned = sorted(set(self.webhook_urls) - set(self.webhook_secrets))
        if unsigned:
            raise ValueError(f"webhook URLs without a webhook secret: {unsigned}")
        return self
