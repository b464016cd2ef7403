"""``sentinel://`` URLs: parsed into sentinels and a database; the broker gets the master."""

from __future__ import annotations

import pytest

from jobs.connections import redis_client
from jobs.settings_sections import RedisSection


def test_a_sentinel_url_names_every_sentinel_and_the_database() -> None:
    url = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2;sentinel://10.0.0.3:26380/2"
    client = redis_client(url, "kv-master")
    pool = client.connection_pool
    assert pool.service_name == "kv-master"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 2
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    addresses = [s.connection_pool.connection_kwargs for s in sentinels]
    assert [(a["host"], a["port"]) for a in addresses] == [
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26379),
        ("10.0.0.3", 26380),
    ]


@pytest.mark.parametrize("url", ["sentinel://", "sentinel://host:port", "sentinel://:1"])
def test_a_malformed_sentinel_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a sentinel URL"):
        redis_client(url, "mymaster")


def test_the_broker_is_told_the_master_name_only_behind_sentinels() -> None:
    plain = RedisSection(redis_url="redis://127.0.0.1:6379/0")
    assert "master_name" not in plain.broker_transport_options()
    sentinel = RedisSection(
        redis_url="sentinel://127.0.0.1:26379/0", redis_sentinel_master="kv-master"
    )
    assert sentinel.broker_transport_options()["master_name"] == "kv-master"
