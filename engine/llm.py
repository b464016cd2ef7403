"""The offline API, in vLLM's shape: ``LLM(model=DIR).generate(prompts, params)``."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from tqdm import tqdm

from engine.config import EngineConfig
from engine.llm_engine import EngineOutput, LLMEngine
from engine.lora_request import LoRARequest
from engine.outputs import PoolingRequestOutput, RequestOutput
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

Prompt = str | list[int]
ChatMessages = list[dict[str, Any]]


RUNNERS = ("generate", "pooling")


class LLM:
    """Runs a whole list of prompts through one engine and returns their outputs in order.

    ``runner="pooling"`` makes it an embedding model (``embed``); the engine underneath is the
    same one, and an engine serving generation takes embedding requests in the same steps.
    """

    def __init__(self, model: str, runner: str = "generate", **engine_args: Any) -> None:
        if runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
        self.runner = runner
        self.engine = LLMEngine(EngineConfig(model=str(model), **engine_args))

    def get_tokenizer(self) -> Tokenizer:
        if self.engine.tokenizer is None:
            raise ValueError("this model directory has no tokenizer files")
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for each prompt (text, or token ids); one ``RequestOutput`` per prompt.
        ``lora_request``: one adapter for every prompt, or one (or None: the base model)
        per prompt."""
        if self.runner != "generate":
            raise ValueError("this LLM was made with runner='pooling': use embed()")
        prompt_list = _prompt_list(prompts)
        params_list = self._params_for(prompt_list, sampling_params)
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError("priority must have one entry per prompt")
        loras = _lora_list(lora_request, len(prompt_list))
        self._submit(prompt_list, params_list, priority, loras)
        outputs = self._run(len(prompt_list), use_tqdm, "generate")
        return [o for o in outputs if isinstance(o, RequestOutput)]

    def embed(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParams | None = None,
        use_tqdm: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Embed each prompt (text, or token ids): prefill only, pooled as the model says;
        one ``PoolingRequestOutput`` per prompt, its vector in ``.outputs.embedding``."""
        if self.runner != "pooling":
            raise ValueError("embed() needs an LLM made with runner='pooling'")
        prompt_list = _prompt_list(prompts)
        params = pooling_params or PoolingParams()
        self._submit(prompt_list, [params] * len(prompt_list), None, [None] * len(prompt_list))
        outputs = self._run(len(prompt_list), use_tqdm, "embed")
        return [o for o in outputs if isinstance(o, PoolingRequestOutput)]

    def _submit(
        self,
        prompts: list[Prompt],
        params: Sequence[SamplingParams | PoolingParams],
        priority: Sequence[int] | None,
        loras: Sequence[LoRARequest | None],
    ) -> None:
        try:
            for i, (prompt, p, lora) in enumerate(zip(prompts, params, loras, strict=True)):
                self.engine.add_request(i, prompt, p, priority[i] if priority else 0, lora)
        except ValueError:
            # All or nothing: a refused prompt leaves no half-submitted call in the engine.
            for i in range(len(prompts)):
                self.engine.abort_request(i)
            raise

    def chat(
        self,
        messages: ChatMessages | Sequence[ChatMessages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then ``generate``."""
        single = bool(messages) and isinstance(messages[0], dict)
        conversations: list[ChatMessages] = [messages] if single else list(messages)  # type: ignore[list-item, arg-type]
        tokenizer = self.get_tokenizer()
        prompts: list[Prompt] = [tokenizer.apply_chat_template(c) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    def _params_for(
        self,
        prompts: list[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
    ) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams() for _ in prompts]
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(
                f"got {len(sampling_params)} sampling params for {len(prompts)} prompts"
            )
        return list(sampling_params)

    def _run(self, num_requests: int, use_tqdm: bool, desc: str) -> list[EngineOutput]:
        results: dict[Hashable, EngineOutput] = {}
        with tqdm(total=num_requests, desc=desc, unit="req", disable=not use_tqdm) as progress:
            while self.engine.has_unfinished_requests():
                finished = self.engine.step()
                for output in finished:
                    results[output.request_id] = output
                if finished:
                    stats = self.engine.stats
                    progress.set_postfix(
                        tok_s=f"{stats.num_generated_tokens / max(stats.busy_time_s, 1e-9):.0f}",
                        kv=f"{stats.num_kv_blocks_used}/{stats.num_kv_blocks_total}",
                        refresh=False,
                    )
                    progress.update(len(finished))
        return [results[i] for i in range(num_requests)]


def _prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (text or a token-id list) or a sequence of them, as a list of prompts."""
    if isinstance(prompts, str) or (
        isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
    ):
        return [prompts]  # type: ignore[list-item]
    return list(prompts)  # type: ignore[arg-type]


def _lora_list(
    lora_request: LoRARequest | Sequence[LoRARequest | None] | None, num_prompts: int
) -> list[LoRARequest | None]:
    """One adapter (or None) per prompt, from one for all or a list of them."""
    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [lora_request] * num_prompts
    loras = list(lora_request)
    if len(loras) != num_prompts:
        raise ValueError(f"got {len(loras)} lora requests for {num_prompts} prompts")
    if any(r is not None and not isinstance(r, LoRARequest) for r in loras):
        raise ValueError("each lora_request must be a LoRARequest or None")
    return loras
