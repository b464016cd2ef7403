"""``KVBATCH_LORA_ADAPTERS``: its two forms, its refusals, and what a worker makes of it."""

from __future__ import annotations

import pytest

from engine import LoRARequest
from jobs.adapters import RegisteredAdapter, parse_adapters
from jobs.settings import Settings
from worker.adapter_table import adapter_requests
from worker.settings import worker_adapters, worker_engine_config


def test_short_and_json_forms_agree() -> None:
    short = parse_adapters("a=base:s3://bucket/a, b=base:/x/b")
    assert short["a"] == RegisteredAdapter("a", "base", "s3://bucket/a")
    assert short["b"] == RegisteredAdapter("b", "base", "/x/b")
    assert parse_adapters('{"a": {"base": "base", "path": "s3://bucket/a"}}')["a"] == short["a"]
    assert parse_adapters('{"a": "base:s3://bucket/a"}')["a"] == short["a"]


@pytest.mark.parametrize("bad", ["a=s3://bucket/a", "a", "a=base", "a b=base:/p", "a=base:"])
def test_malformed_entries_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_adapters(bad)


def test_settings_route_adapters_to_their_base_models_queue() -> None:
    settings = Settings.from_flat(
        {"models": {"m": "/models/m"}, "lora_adapters": parse_adapters("a=m:/adapters/a")}
    )
    router = settings.model_router()
    assert router.queue_of("a") == router.queue_of("m")
    assert router.route("a").adapter == "a"
    assert settings.enforced_limits().served_models == {"m", "a"}


@pytest.mark.parametrize(
    ("adapters", "says"),
    [("a=other:/p", "does not serve"), ("m=m:/p", "name of a served model")],
)
def test_settings_refuse_adapters_of_unserved_models(adapters: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Settings.from_flat(
            {"models": {"m": "/models/m"}, "lora_adapters": parse_adapters(adapters)}
        )


def test_a_worker_runs_its_own_models_adapters_with_stable_ids() -> None:
    adapters = parse_adapters("b=base:/x/b,a=base:s3://bucket/a,c=other:/c")
    assert adapter_requests(adapters, "base") == {
        "a": LoRARequest("a", 1, "s3://bucket/a"),
        "b": LoRARequest("b", 2, "/x/b"),
    }
    assert adapter_requests(adapters, "other") == {"c": LoRARequest("c", 3, "/c")}


def test_a_worker_reads_the_short_form_from_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KVBATCH_MODELS", "m=/models/m")
    monkeypatch.setenv("KVBATCH_LORA_ADAPTERS", "a=m:s3://bucket/a")
    monkeypatch.setenv("KVBATCH_ENGINE_MAX_LORA_RANK", "32")
    settings = Settings.from_flat({"worker_model": "/models/m"})
    assert worker_adapters(settings) == {"a": LoRARequest("a", 1, "s3://bucket/a")}
    config = worker_engine_config(settings)
    assert config.enable_lora and config.max_lora_rank == 32
    other = Settings.from_flat({"worker_model": "/models/other"})  # no adapters: LoRA stays off
    assert worker_adapters(other) == {} and not worker_engine_config(other).enable_lora
