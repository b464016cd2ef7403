"""The batch lifecycle: states, what they mean, and which moves between them are legal.

validating ──► in_progress ──► finalizing ──► completed
    │  │            │  │            │
    │  │            │  └──► expired  └──► failed / expired
    │  └──► failed  └──► cancelling ──► cancelled
    └──► cancelled (nothing dispatched yet)
"""

from __future__ import annotations

from enum import StrEnum


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_cancellable(self) -> bool:
        return self in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)

    @property
    def timestamp_field(self) -> str | None:
        """The Batch object's ``*_at`` field stamped when a batch enters this state."""
        return None if self is BatchStatus.VALIDATING else f"{self.value}_at"


_TERMINAL = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)

ALLOWED_TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    BatchStatus.VALIDATING: frozenset(
        {BatchStatus.IN_PROGRESS, BatchStatus.FAILED, BatchStatus.CANCELLED}
    ),
    BatchStatus.IN_PROGRESS: frozenset(
        {
            BatchStatus.FINALIZING,
            BatchStatus.FAILED,
            BatchStatus.EXPIRED,
            BatchStatus.CANCELLING,
        }
    ),
    BatchStatus.FINALIZING: frozenset(
        {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLING}
    ),
    BatchStatus.CANCELLING: frozenset({BatchStatus.CANCELLED}),
    BatchStatus.FAILED: frozenset(),
    BatchStatus.COMPLETED: frozenset(),
    BatchStatus.EXPIRED: frozenset(),
    BatchStatus.CANCELLED: frozenset(),
}


def sources_of(target: BatchStatus) -> list[BatchStatus]:
    """Every state from which ``target`` may be entered."""
    return [s for s, targets in ALLOWED_TRANSITIONS.items() if target in targets]
