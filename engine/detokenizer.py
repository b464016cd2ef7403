"""Output token ids -> text, a few tokens at a time, with stop-string matching."""

from __future__ import annotations

from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

# Prompt tokens decoded ahead of the first output token: tokenizers such as SentencePiece drop
# a leading space at the start of a decode, which context before the output keeps.
_PROMPT_CONTEXT_TOKENS = 5

_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns one request's output tokens into text as they arrive.

    Only a window of ids is decoded each step. ``read`` splits the window into tokens whose text
    is already in ``text`` and tokens not yet emitted::

        window:  [ t0 t1 t2 | t3 t4 ]     (t0.. are output ids, or prompt ids at the start)
                   |<done>-| read
        emitted text = decode(window)[len(decode(window[:read])):]

    The new text is emitted only when it does not end in U+FFFD, i.e. when the last token did
    not stop half-way through a multi-byte UTF-8 character; otherwise the window grows until the
    character is complete. After emitting, the window restarts at the old ``read``, keeping one
    chunk of context for tokenizers whose decoding depends on the previous token.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_token_ids: list[int], params: SamplingParams
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = params.skip_special_tokens
        self._stops = list(params.stop)
        self._include_stop = params.include_stop_str_in_output
        self._stop_lookback = max((len(s) for s in self._stops), default=1) - 1
        context = prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:] if prompt_token_ids else []
        self._window = list(context)
        self._read = len(context)
        self._text = ""
        self.stop_str: str | None = None  # the stop string that ended the output, once matched

    @property
    def text(self) -> str:
        """The output text so far (truncated at the stop string once one matched)."""
        return self._text

    def update(self, new_token_ids: list[int]) -> str | None:
        """Append newly sampled tokens; returns the stop string if the text now contains one."""
        assert self.stop_str is None, "update after a stop string matched"
        self._window.extend(new_token_ids)
        return self._emit(complete_only=True)

    def flush(self) -> str | None:
        """Emit text still held back for an unfinished character (as U+FFFD), for a request
        that ended on eos or length; afterwards ``text`` equals decoding all output ids."""
        assert self.stop_str is None, "flush after a stop string matched"
        return self._emit(complete_only=False)

    def _emit(self, complete_only: bool) -> str | None:
        decode = self._tokenizer.decode
        done_text = decode(self._window[: self._read], skip_special_tokens=self._skip_special)
        all_text = decode(self._window, skip_special_tokens=self._skip_special)
        if len(all_text) <= len(done_text):
            return None
        if complete_only and all_text.endswith(_REPLACEMENT_CHAR):
            return None
        old_len = len(self._text)
        self._text += all_text[len(done_text) :]
        del self._window[: self._read]
        self._read = len(self._window)
        if self._stops:
            self.stop_str = self._match_stop(old_len)
        return self.stop_str

    def _match_stop(self, old_len: int) -> str | None:
        """Find the earliest stop string that ends in the new text and truncate ``text`` there.

        A stop string may begin in older text, so the search starts ``max(len(stop)) - 1``
        characters before the new text.
        """
        start = max(old_len - self._stop_lookback, 0)
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = self._text.find(stop, start)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        at, stop = best
        self._text = self._text[: at + len(stop)] if self._include_stop else self._text[:at]
        return stop
