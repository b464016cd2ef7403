"""The offline API, in vLLM's shape: ``LLM(model=DIR).generate(prompts, params)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

Prompt = str | list[int]
ChatMessages = list[dict[str, Any]]


class LLM:
    """Runs a whole list of prompts through one engine and returns their outputs in order."""

    def __init__(self, model: str, **engine_args: Any) -> None:
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
    ) -> list[RequestOutput]:
        """Generate for each prompt (text, or token ids); one ``RequestOutput`` per prompt."""
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        prompt_list: list[Prompt] = list(prompts)  # type: ignore[arg-type]
        params_list = self._params_for(prompt_list, sampling_params)
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError("priority must have one entry per prompt")
        try:
            for i, (prompt, params) in enumerate(zip(prompt_list, params_list, strict=True)):
                self.engine.add_request(str(i), prompt, params, priority[i] if priority else 0)
        except ValueError:
            # All or nothing: a refused prompt leaves no half-submitted call in the engine.
            for i in range(len(prompt_list)):
                self.engine.abort_request(str(i))
            raise
        return self._run(len(prompt_list), use_tqdm)

    def chat(
        self,
        messages: ChatMessages | Sequence[ChatMessages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then ``generate``."""
        single = bool(messages) and isinstance(messages[0], dict)
        conversations: list[ChatMessages] = [messages] if single else list(messages)  # type: ignore[list-item, arg-type]
        tokenizer = self.get_tokenizer()
        prompts: list[Prompt] = [tokenizer.apply_chat_template(c) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

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

    def _run(self, num_requests: int, use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        with tqdm(
            total=num_requests, desc="generate", unit="req", disable=not use_tqdm
        ) as progress:
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
        return [results[str(i)] for i in range(num_requests)]
