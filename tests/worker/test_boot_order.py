"""The worker's boot order: the embedded beat forks before the engine starts any thread."""

from __future__ import annotations

from celery.worker import WorkController

from worker.app import celery_app

BEAT = "celery.worker.components.Beat"
ENGINE = "worker.bootstep.EngineBootstep"


def test_the_embedded_beat_forks_before_the_engine_starts_its_threads() -> None:
    """Celery orders the steps its graph leaves free as its set of step names iterates,
    which the hash seed picks anew in each process; every such order must fork the beat
    (a child that inherits every lock as it stands) before the engine's threads exist."""
    blueprint = WorkController.Blueprint(steps=celery_app.steps["worker"])
    claimed = list(blueprint.claim_steps().items())
    for shift in range(len(claimed)):
        rotated = claimed[shift:] + claimed[:shift]
        for steps in (rotated, rotated[::-1]):
            blueprint.steps = dict(steps)
            order = [step.name for step in blueprint._finalize_steps(blueprint.steps)]
            assert order.index(BEAT) < order.index(ENGINE), order
