"""The one settings model: flat ``KVBATCH_*`` names, nested sections, read only when asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.settings import Settings, env_names

REPO = Path(__file__).resolve().parents[2]


def test_each_flat_variable_lands_in_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KVBATCH_REDIS_URL": "redis://cache:6379/2",
        "KVBATCH_MODELS": "chat=/models/chat",
        "KVBATCH_S3_BUCKET": "outputs",
        "KVBATCH_MAX_N": "3",
        "KVBATCH_API_KEYS": "sk-1:team-a",
        "KVBATCH_WORKER_MODEL": "/models/chat",
        "KVBATCH_ENGINE_MAX_NUM_SEQS": "8",
        "KVBATCH_VISIBILITY_TIMEOUT_S": "7200",
        "KVBATCH_WEBHOOK_ALLOWED_HOSTS": '["hooks.example.com"]',
        "KVBATCH_FAIR_SHARE_WINDOW": "5",
        "KVBATCH_FLOWER_PORT": "5566",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis.redis_url == "redis://cache:6379/2"
    assert settings.serving.models == {"chat": "/models/chat"}
    assert settings.storage.s3_bucket == "outputs"
    assert settings.limits.max_n == 3 and settings.enforced_limits().max_n == 3
    assert settings.api.api_keys == {"sk-1": "team-a"}
    assert settings.worker.engine.max_num_seqs == 8
    assert settings.worker.engine.model == "/models/chat"
    assert settings.reliability.visibility_timeout_s == 7200
    assert settings.webhooks.webhook_allowed_hosts == ["hooks.example.com"]
    assert settings.fair_share.fair_share_window == 5
    assert settings.flower.port == 5566
    assert set(env) <= env_names()


def test_settings_read_back_from_the_environment_they_write() -> None:
    settings = Settings.from_flat(
        {
            "models": {"m": "/models/m"},
            "lora_adapters": "a=m:/adapters/a",
            "api_keys": "k:t",
            "tenant_quotas": {"t": {"max_active_batches": 2}},
            "webhook_allowed_hosts": ["h.example.com"],
            "storage_backend": "s3",
            "shard_size": 4,
            "flower_port": 6000,
        }
    )
    back = Settings.from_env(settings.to_env())
    assert back.model_dump(exclude={"worker"}) == settings.model_dump(exclude={"worker"})


def test_a_name_no_setting_has_is_refused() -> None:
    with pytest.raises(KeyError, match="KVBATCH_SHARD_SIZES"):
        Settings.from_flat({"shard_sizes": 4})


def test_importing_the_worker_app_reads_no_settings() -> None:
    """A bad variable fails where the settings are first read, not at import."""
    code = (
        "import worker.app, worker.tasks\n"
        "from jobs.settings import get_settings\n"
        "try:\n    get_settings()\nexcept ValueError:\n    print('refused on first use')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "KVBATCH_MAX_N": "not-a-number"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "refused on first use" in done.stdout
