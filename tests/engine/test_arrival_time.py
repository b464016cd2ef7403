"""``add_request(arrival_time=...)``: a caller's own order for the waiting queue."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import pytest

from engine import InvalidRequestError, SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine


def test_an_earlier_arrival_time_is_admitted_before_waiting_requests(
    tiny_model_dirs: dict[str, Path],
) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dirs["llama"]), max_num_seqs=1))
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    for i, arrival in enumerate((0.0, 2.0, 3.0)):
        engine.add_request(("a", i), [5 + i, 6, 7], params, arrival_time=arrival)
    finished: list[Hashable] = [o.request_id for o in engine.step() if o.finished]
    assert engine.running_request_ids() == {("a", 0)}
    engine.add_request(("b", 0), [9, 6, 7], params, arrival_time=1.0)  # added last, runs 2nd
    engine.add_request(("c", 0), [9, 6, 8], params, priority=-1, arrival_time=9.0)  # 1st
    while engine.has_unfinished_requests():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert finished == [("a", 0), ("c", 0), ("b", 0), ("a", 1), ("a", 2)]
    with pytest.raises(InvalidRequestError, match="arrival_time"):
        engine.add_request("nan", [5, 6], params, arrival_time=float("nan"))
