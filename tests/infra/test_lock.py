"""The lock in requirements/ covers every dependency pyproject.toml declares, within its range.

A package added to pyproject.toml without refreshing the lock would install at whatever
version the index serves that day: the drift the lock exists to stop.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def read_lock(name: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pin = Requirement(line)
        (spec,) = pin.specifier
        assert spec.operator == "==", f"requirements/{name}: {line!r} is not an exact pin"
        pins[canonicalize_name(pin.name)] = Version(spec.version)
    return pins


def declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return [Requirement(text) for text in names]


@pytest.mark.parametrize(("lock", "extra"), [("runtime.txt", None), ("dev.txt", "dev")])
def test_lock_pins_every_declared_dependency_within_its_range(lock: str, extra: str | None) -> None:
    pins = read_lock(lock)
    for requirement in declared(extra):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{requirement.name} is in pyproject.toml but not locked: run infra/lock.sh"
        )
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )


def test_runtime_and_dev_locks_agree() -> None:
    runtime, dev = read_lock("runtime.txt"), read_lock("dev.txt")
    differ = {
        name: (runtime[name], dev[name]) for name in runtime if dev.get(name) != runtime[name]
    }
    assert not differ, f"the two locks pin different versions: {differ}"
