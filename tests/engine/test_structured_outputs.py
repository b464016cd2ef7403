"""Constrained decoding on SmolLM2: schema-valid extraction, untouched neighbours, exact choices,
logit bias under the mask, chunked prefill, preemption and prefix caching, masked logprobs,
n > 1, rollback, and refused constraints."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import torch

from engine import (
    LLM,
    SamplingParams,
    StructuredOutputsError,
    StructuredOutputsParams,
)
from engine.block_pool import KVBlock
from engine.grammar import GrammarCache, StructuredOutputs
from engine.outputs import RequestOutput
from engine.request import Request
from infra.harness.extraction_corpus import DOCUMENTS, SCHEMAS, extraction_messages

pytestmark = pytest.mark.slow  # started first by the test processes (tests/conftest.py)

MAX_TOKENS = {"review": 60, "invoice": 130, "staff": 60}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The test machine's cores are shared: one intra-op thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> LLM:
    return LLM(str(smollm2_dir), dtype="float32", device="cpu", block_size=16)


def _schema_params(schema_name: str, **kwargs: object) -> SamplingParams:
    settings: dict[str, object] = {"temperature": 0.0, "max_tokens": MAX_TOKENS[schema_name]}
    return SamplingParams(
        structured_outputs=StructuredOutputsParams(json=SCHEMAS[schema_name]),
        **(settings | kwargs),  # type: ignore[arg-type]
    )


def test_every_stop_answer_of_the_corpus_validates(smol: LLM) -> None:
    assert len(DOCUMENTS) >= 40 and len(SCHEMAS) == 3
    stats = smol.engine.structured.stats if smol.engine.structured else None
    assert stats is not None
    compiles_before = stats.num_compiles
    outputs = smol.chat(
        [extraction_messages(d) for d in DOCUMENTS],
        [_schema_params(d.schema_name) for d in DOCUMENTS],
        use_tqdm=False,
    )
    finished = dict.fromkeys(SCHEMAS, 0)
    for doc, output in zip(DOCUMENTS, outputs, strict=True):
        answer = output.outputs[0]
        if answer.finish_reason == "stop":
            finished[doc.schema_name] += 1
            jsonschema.validate(json.loads(answer.text), SCHEMAS[doc.schema_name])
        else:
            assert answer.finish_reason == "length"
            assert len(answer.token_ids) == MAX_TOKENS[doc.schema_name]
    # A 135M model rambles inside long invoice strings; most answers still close.
    assert all(finished.values()) and sum(finished.values()) >= len(DOCUMENTS) // 2, finished
    assert stats.num_compiles - compiles_before <= 3  # one per schema, whatever the line count
    assert stats.num_cache_hits >= len(DOCUMENTS) - 3


def test_json_object_answers_are_objects(smol: LLM) -> None:
    docs = DOCUMENTS[::8]
    params = SamplingParams(
        temperature=0.0, max_tokens=60, structured_outputs=StructuredOutputsParams(json_object=True)
    )
    outputs = smol.chat([extraction_messages(d) for d in docs], params, use_tqdm=False)
    finished = [o.outputs[0] for o in outputs if o.outputs[0].finish_reason == "stop"]
    assert finished
    for answer in finished:
        assert isinstance(json.loads(answer.text), dict)


def test_constrained_neighbours_leave_an_unconstrained_request_alone(smol: LLM) -> None:
    chat = [{"role": "user", "content": "Write a haiku about the sea."}]
    free = SamplingParams(temperature=0.0, max_tokens=24)
    alone = smol.chat([chat], free, use_tqdm=False)[0].outputs[0].token_ids
    docs = DOCUMENTS[:3]
    mixed = smol.chat(
        [extraction_messages(docs[0]), chat, *(extraction_messages(d) for d in docs[1:])],
        [
            _schema_params("review", max_tokens=24),
            free,
            *(_schema_params("review", max_tokens=24),) * 2,
        ],
        use_tqdm=False,
    )
    assert mixed[1].outputs[0].token_ids == alone


def test_choice_holding_the_greedy_answer_gives_exactly_it(smol: LLM) -> None:
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    greedy = smol.chat([chat], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    free = greedy[0].outputs[0]
    assert free.text.strip()
    choices = ["London", free.text, "Berlin and Madrid", free.text + " is the answer"]
    constrained = SamplingParams(
        temperature=0.0, max_tokens=12, structured_outputs=StructuredOutputsParams(choice=choices)
    )
    answer = smol.chat([chat], constrained, use_tqdm=False)[0].outputs[0]
    assert answer.text == free.text
    eos = smol.engine.eos_token_id
    assert [t for t in answer.token_ids if t != eos] == [t for t in free.token_ids if t != eos]


def test_preemption_and_prefix_cache_hits_keep_outputs(smollm2_dir: Path, smol: LLM) -> None:
    docs = [d for d in DOCUMENTS if d.schema_name == "staff"][:6]
    chats = [extraction_messages(d) for d in docs]
    params = [_schema_params("staff") for _ in docs]
    reference = [o.outputs[0] for o in smol.chat(chats, params, use_tqdm=False)]

    tight = LLM(str(smollm2_dir), dtype="float32", device="cpu", block_size=16, num_kv_blocks=14)
    scheduler = tight.engine.scheduler
    preempt, lookup = scheduler._preempt, scheduler.kv_cache.get_computed_blocks
    preempted_at: list[int] = []  # output tokens of each request when it was preempted
    resumed_hits: list[int] = []  # cached blocks found by requests that had output tokens

    def watched_preempt(request: Request) -> None:
        preempted_at.append(request.num_output_tokens)
        preempt(request)

    def watched_lookup(request: Request) -> list[KVBlock]:
        hits = lookup(request)
        if request.num_output_tokens:
            resumed_hits.append(len(hits))
        return hits

    scheduler._preempt = watched_preempt  # type: ignore[method-assign]
    scheduler.kv_cache.get_computed_blocks = watched_lookup  # type: ignore[method-assign]
    first = tight.chat(chats[:2], params[:2], use_tqdm=False)  # cached prompt blocks for later
    rest = tight.chat(chats, params, use_tqdm=False)
    stats = tight.engine.stats
    assert stats.prefix_cache_hits > 0
    # Requests were preempted mid-generation, and came back to prefix-cache hits on blocks
    # that hold their prompt and output tokens; their matchers carried on from there.
    assert preempted_at and max(preempted_at) > 0, preempted_at
    assert resumed_hits and max(resumed_hits) > 0, resumed_hits
    for got in ([o.outputs[0] for o in first], [o.outputs[0] for o in rest]):
        for answer, expected in zip(got, reference, strict=False):
            assert answer.token_ids == expected.token_ids
            if answer.finish_reason == "stop":
                jsonschema.validate(json.loads(answer.text), SCHEMAS["staff"])


def test_logit_bias_steers_among_allowed_tokens_and_never_past_the_mask(smol: LLM) -> None:
    """The mask comes first: a bias still picks among the allowed tokens, and no bias lifts a
    masked token back into play."""
    chat = [{"role": "user", "content": "Name a colour."}]
    choices = ["red", "green", "blue"]
    tokenizer = smol.get_tokenizer()

    def answer(bias: dict[int, float]) -> str:
        params = SamplingParams(
            temperature=0.0,
            max_tokens=6,
            logit_bias=bias,
            presence_penalty=2.0,
            structured_outputs=StructuredOutputsParams(choice=choices),
        )
        return smol.chat([chat], params, use_tqdm=False)[0].outputs[0].text

    for wanted in ("blue", "green"):
        assert answer({tokenizer.encode(wanted, add_special_tokens=False)[0]: 100.0}) == wanted
    masked = tokenizer.encode("Paris", add_special_tokens=False)[0]
    assert answer({masked: 100.0}) in choices


def test_chunked_prefill_keeps_outputs(smollm2_dir: Path, smol: LLM) -> None:
    """Prompts cut into 32-token chunks decode the same constrained tokens as whole ones."""
    docs = [d for d in DOCUMENTS if d.schema_name == "staff"][:2]
    chats = [extraction_messages(d) for d in docs]
    params = _schema_params("staff", max_tokens=16)
    whole = smol.chat(chats, params, use_tqdm=False)
    chunked_llm = LLM(
        str(smollm2_dir), dtype="float32", device="cpu", block_size=16, max_num_batched_tokens=32
    )
    chunked = chunked_llm.chat(chats, params, use_tqdm=False)
    assert min(len(o.prompt_token_ids) for o in chunked) > 32  # every prompt took chunks
    for got, expected in zip(chunked, whole, strict=True):
        assert got.outputs[0].token_ids == expected.outputs[0].token_ids


def test_samples_seeds_logprobs_and_stop_strings(smol: LLM) -> None:
    doc = next(d for d in DOCUMENTS if d.schema_name == "staff")
    tokenizer = smol.get_tokenizer()
    params = _schema_params("staff", n=3, seed=7, logprobs=3)
    params.temperature = 0.9
    once, again = (smol.chat([extraction_messages(doc)], params, use_tqdm=False)[0] for _ in "ab")
    assert [o.token_ids for o in once.outputs] == [o.token_ids for o in again.outputs]
    assert len({tuple(o.token_ids) for o in once.outputs}) > 1  # each sample its own way
    for sample in once.outputs:
        if sample.finish_reason == "stop":
            jsonschema.validate(json.loads(sample.text), SCHEMAS["staff"])
        assert sample.logprobs is not None
        # The masked distribution: the first token must open the object, so every token
        # with any mass starts with "{" and the allowed tokens hold all of it.
        first = sample.logprobs[0]
        allowed = [t for t, lp in first.top if lp > float("-inf")]
        assert first.token_id in allowed
        assert all(tokenizer.decode([t]).startswith("{") for t in allowed)
        raw = smol.chat([extraction_messages(doc)], SamplingParams(max_tokens=1, logprobs=3))
        raw_first = raw[0].outputs[0].logprobs
        assert raw_first is not None
        masked_mass = sum(math.exp(lp) for _, lp in first.top)
        raw_mass = sum(
            math.exp(lp) for t, lp in raw_first[0].top if tokenizer.decode([t]).startswith("{")
        )
        assert masked_mass >= raw_mass - 1e-6  # renormalised over the allowed tokens
    stopped = SamplingParams(
        temperature=0.0,
        max_tokens=60,
        stop=['"age"'],
        structured_outputs=StructuredOutputsParams(json=SCHEMAS["staff"]),
    )
    cut = smol.chat([extraction_messages(doc)], stopped, use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == '"age"'
    assert cut.text.startswith('{"name": ') and '"age"' not in cut.text


def test_max_tokens_cut_is_a_length_finish(smol: LLM) -> None:
    doc = next(d for d in DOCUMENTS if d.schema_name == "invoice")
    answer = smol.chat([extraction_messages(doc)], _schema_params("invoice", max_tokens=10))
    out = answer[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 10
    assert out.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.text)


def _staff_requests(smol: LLM, *request_ids: str) -> tuple[StructuredOutputs, list[Request]]:
    """Staff-schema requests added to ``smol``'s engine, their grammar compiled, not stepped."""
    engine = smol.engine
    structured = engine.structured
    assert structured is not None
    params = _schema_params("staff")
    assert params.structured_outputs is not None
    structured.cache.get(params.structured_outputs).result(timeout=120)  # compiled: no wait
    prompt = smol.get_tokenizer().apply_chat_template(extraction_messages(DOCUMENTS[-1]))
    for request_id in request_ids:
        engine.add_request(request_id, prompt, params)
    return structured, list(engine.scheduler.requests.values())


def test_rollback_restores_the_mask(smol: LLM) -> None:
    structured, (request,) = _staff_requests(smol, "rollback")
    before = structured.fill_bitmask([request])
    assert before is not None
    for token_id in smol.get_tokenizer().encode('{"name": "A', add_special_tokens=False):
        request.append_token(token_id)
        structured.accept(request, token_id)
    advanced = structured.fill_bitmask([request])
    assert advanced is not None and not torch.equal(advanced.bitmask, before.bitmask)
    structured.rollback(request.request_id, request.num_output_tokens)
    del request.token_ids[request.num_prompt_tokens :]
    after = structured.fill_bitmask([request])
    assert after is not None and torch.equal(after.bitmask, before.bitmask)
    with pytest.raises(ValueError, match="cannot roll back"):
        structured.rollback(request.request_id, 1)
    smol.engine.abort_request("rollback")


def test_a_matcher_out_of_step_is_rebuilt_from_the_output_tokens(smol: LLM) -> None:
    """Tokens that reached a request without passing its matcher (a rerun from scratch)
    leave it behind; the next mask is that of a matcher fed the output tokens."""
    structured, (stepped, behind) = _staff_requests(smol, "stepped", "behind")
    fresh = structured.fill_bitmask([behind])
    tokenizer = smol.get_tokenizer()
    for token_id in tokenizer.encode('{"name": "Ann", "age": 4', add_special_tokens=False):
        stepped.append_token(token_id)
        structured.accept(stepped, token_id)
        behind.append_token(token_id)  # the matcher never saw it
    masks = structured.fill_bitmask([stepped, behind])
    assert fresh is not None and masks is not None and masks.rows == [0, 1]
    assert torch.equal(masks.bitmask[1], masks.bitmask[0])
    assert not torch.equal(masks.bitmask[1], fresh.bitmask[0])
    for request_id in ("stepped", "behind"):
        smol.engine.abort_request(request_id)


def test_a_compiling_grammar_does_not_hold_up_the_batch(smol: LLM) -> None:
    engine = smol.engine
    assert engine.structured is not None
    cache = engine.structured.cache
    release = threading.Event()
    compile_for_real = cache._compile

    def slow_compile(params: StructuredOutputsParams):  # type: ignore[no-untyped-def]
        release.wait(60)
        return compile_for_real(params)

    cache._compile = slow_compile  # type: ignore[method-assign]
    try:
        fresh = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        params = SamplingParams(
            temperature=0.0, max_tokens=16, structured_outputs=StructuredOutputsParams(json=fresh)
        )
        engine.add_request("slow", "Is water wet?", params)
        engine.add_request("free", "Hello", SamplingParams(temperature=0.0, max_tokens=3))
        finished = []
        for _ in range(10):
            finished += [o.request_id for o in engine.step()]
            if "free" in finished:
                break
        assert finished == ["free"]  # it ran to the end while the grammar was compiling
        release.set()
        while engine.has_unfinished_requests():
            for output in engine.step():
                assert isinstance(output, RequestOutput)
                assert output.request_id == "slow"
                assert output.outputs[0].finish_reason == "stop"
                assert isinstance(json.loads(output.outputs[0].text)["ok"], bool)
    finally:
        release.set()
        cache._compile = compile_for_real  # type: ignore[method-assign]


def _deep_schema(levels: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (
            StructuredOutputsParams(
                json={"type": "object", "properties": {"a": {"type": "integr"}}}
            ),
            r"json\.properties\.a\.type: 'integr' is not valid",
        ),
        (
            StructuredOutputsParams(
                json={
                    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                    "properties": {"x": {"$ref": "#/$defs/a"}},
                }
            ),
            r"json\.properties\.x\.\$ref: the references loop",
        ),
        (
            StructuredOutputsParams(json={"properties": {"x": {"$ref": "#/$defs/none"}}}),
            r"json\.properties\.x\.\$ref: '#/\$defs/none' does not resolve",
        ),
        (
            StructuredOutputsParams(json={"type": "object", "description": "x" * 10_000_000}),
            r"json: the schema is 100000\d\d bytes, over the limit of 1000000",
        ),
        (
            StructuredOutputsParams(json=_deep_schema(400)),
            r"json(\.items){65}: the schema is nested deeper than 64 levels",
        ),
        (StructuredOutputsParams(regex="(unclosed"), r"regex: .*parenthesis is not closed"),
        (
            StructuredOutputsParams(json={"type": "string", "pattern": "[z-a]"}),
            r"json: ",
        ),
        (StructuredOutputsParams(choice=[]), r"choice: give 1 to 1024 strings"),
    ],
    ids=["unknown-type", "ref-loop", "ref-missing", "10mb", "deep", "regex", "pattern", "choice"],
)
def test_bad_constraints_are_refused_on_entry(
    smol: LLM, constraint: StructuredOutputsParams, message: str
) -> None:
    params = SamplingParams(max_tokens=4, structured_outputs=constraint)
    with pytest.raises(StructuredOutputsError, match=message):
        smol.engine.add_request("bad", "Hello", params)
    assert not smol.engine.has_unfinished_requests()


def test_a_thousand_levels_deep_schema_is_refused(smol: LLM) -> None:
    """Deeper than Python's recursion limit: the bound is checked without recursing."""
    params = SamplingParams(structured_outputs=StructuredOutputsParams(json=_deep_schema(1000)))
    with pytest.raises(StructuredOutputsError, match="nested deeper than 64 levels"):
        smol.engine.add_request("deep", "Hello", params)


def test_grammar_cache_compiles_once_per_schema_and_keeps_the_recent_ones(smol: LLM) -> None:
    vocab_size = smol.engine.model_config.vocab_size
    cache = GrammarCache(smol.get_tokenizer(), vocab_size, num_threads=1, max_entries=2)
    a, b, c = (StructuredOutputsParams(regex=r) for r in ("a+", "b+", "c+"))
    same_as_a = StructuredOutputsParams(regex="a+", origin="guided_regex")
    first = cache.get(a)
    assert cache.get(same_as_a) is first  # one key per canonical constraint
    cache.get(b).result(timeout=60)
    cache.get(c).result(timeout=60)  # evicts a, the least recently used
    again = cache.get(a)
    assert again is not first
    again.result(timeout=60)
    assert cache.get(c) is cache.get(c)
    assert (cache.stats.num_compiles, cache.stats.num_cache_hits) == (4, 3)
    # The key is the canonical schema: key order and JSON text vs object do not matter.
    staff = SCHEMAS["staff"]
    reordered = json.dumps(dict(reversed(staff.items())), indent=2)
    assert StructuredOutputsParams(json=staff).key == StructuredOutputsParams(json=reordered).key
    assert StructuredOutputsParams(json=staff).key != StructuredOutputsParams(json_object=True).key
