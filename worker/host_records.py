"""What crosses the engine host's seam: submissions in, one typed result out per request.

A request is named by its caller's key (any hashable; the service uses a line's
:class:`~worker.line_parts.LinePart`), which the engine carries through to its outputs, so
no id is ever parsed. A result says how the request ended, one class per way::

    Finished(output)   the engine answered it
    Refused(message)   the engine can never run it (a 400 for the caller)
    Stopped(reason)    its batch stopped (cancelled, expired) or its shard withdrew it
    Failed(message)    the engine broke while running it
    Interrupted()      the worker is shutting down: run it again elsewhere
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from engine.lora_request import LoRARequest
from engine.outputs import PoolingRequestOutput, RequestOutput
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParams

StopChecker = Callable[[set[str]], dict[str, str]]


@dataclass(slots=True)
class ChatPrompt:
    """Messages to render with the model's chat template (in the engine thread)."""

    messages: list[dict[str, Any]]


PromptInput = str | list[int] | ChatPrompt


@dataclass(frozen=True, slots=True)
class Finished:
    request_id: Hashable
    output: RequestOutput | PoolingRequestOutput


@dataclass(frozen=True, slots=True)
class Stopped:
    request_id: Hashable
    reason: str
    output: RequestOutput | None = None  # what it had produced when it stopped


@dataclass(frozen=True, slots=True)
class _Message:
    request_id: Hashable
    message: str


class Refused(_Message):
    """The engine can never run it: ``message`` says why, for the caller's 400."""

    __slots__ = ()


class Failed(_Message):
    """The engine broke while running it: ``message`` is the engine's error."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Interrupted:
    request_id: Hashable


HostResult = Finished | Refused | Stopped | Failed | Interrupted


@dataclass(slots=True)
class Submission:
    request_id: Hashable
    batch_id: str
    prompt: PromptInput
    params: SamplingParams | PoolingParams  # pooling: an embedding, in the same steps
    sink: Callable[[HostResult], None]
    priority: int = 0
    lora_request: LoRARequest | None = None  # the line's adapter; None: the base model
    tenant: str = ""  # whose turn it is: tenants share the engine fairly (worker/fair_order.py)


@dataclass(slots=True)
class Withdrawal:
    """Requests whose shard gave up on them (it failed mid-run): abort them if in flight.

    It travels through the submission queue behind the shard's own submissions, so when the
    engine thread reaches it each of them is in flight or already answered, and a rerun of
    the shard (whose submissions come later) can reuse the same request ids.
    """

    request_ids: frozenset[Hashable]
