"""How many shard messages wait in the broker's queue, every priority level summed.

Read through kombu (``queue_declare``, which on Redis creates nothing and sums the lengths of
the queue's priority lists), so the Redis key of each list stays kombu's business. Not
``passive=True``: kombu's existence check for it ignores ``global_keyprefix`` and answers
"no such queue" for a queue that holds messages. Only the engine host's queue watcher calls
it, while the engine is idle (worker/engine_load.py).
"""

from __future__ import annotations

from typing import Any

from kombu import Connection


class QueueProbe:
    def __init__(self, broker_url: str, queue: str, transport_options: dict[str, Any]) -> None:
        self._connection = Connection(broker_url, transport_options=transport_options)
        self._queue = queue
        self._channel: Any = None

    def __call__(self) -> int:
        try:
            if self._channel is None:
                self._channel = self._connection.channel()
            return int(self._channel.queue_declare(self._queue).message_count)
        except Exception:
            self._channel = None  # a broken connection: open a new channel next time
            self._connection.close()
            raise

    def close(self) -> None:
        self._connection.close()
