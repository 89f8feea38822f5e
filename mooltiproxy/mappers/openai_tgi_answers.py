"""TGI ``/generate`` answers → OpenAI ``chat.completion`` / ``text_completion`` answers.

``chat_answer`` and ``text_answer`` are callables with two more attributes the gateway uses: ``stream(ctx)``
(the event-stream translator, see ``openai_tgi_stream``) and ``error(status, body, ctx)`` (TGI error answers →
OpenAI errors, see ``_tgi_errors``).

* finish reasons: ``eos_token`` / ``stop_sequence`` → ``stop``, ``length`` → ``length`` (no details → ``stop``);
* the text is cut before the first stop sequence (TGI includes it; OpenAI never does);
* ``usage.prompt_tokens`` comes from the ``x-prompt-tokens`` header (or the prefill), counted once per prompt;
  ``completion_tokens`` is TGI's ``generated_tokens`` (which counts the end-of-sequence token), summed;
* logprobs (when asked) come from ``details.tokens`` / ``top_tokens``; special tokens are left out;
* chat requests with ``tools`` (``tool_choice`` not ``none``) on a route with a tool-call format (see
  ``toolcalls``): an answer that is tool calls becomes ``message.tool_calls`` (``content``: the text around them,
  or null) with ``finish_reason`` ``tool_calls``; any other answer stays content.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import GatewayError, UpstreamError
from ..plugin import MappingContext, StreamTranslator
from ._common import (
    STATE_KEY,
    ChatLogprobs,
    RequestState,
    TextLogprobs,
    earliest_stop,
    envelope,
    finish_reason,
    int_header,
    state_of,
    tool_call_id,
)
from ._tgi_errors import status_error
from .openai_tgi_stream import OpenAIStream
from .toolcalls import parse_tool_calls

__all__ = ["TGIAnswerMapper", "chat_answer", "text_answer"]

_EMPTY: Mapping[str, str] = {}


def _answers(payload: Any) -> list[dict[str, Any]]:
    """One TGI answer per upstream request: a dict, a ``POST /`` one-element list, or a list of either."""
    items = payload if isinstance(payload, list) else [payload]
    answers: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, list) and len(item) == 1:
            item = item[0]
        if not isinstance(item, dict) or not isinstance(item.get("generated_text"), str):
            raise UpstreamError("the model server's answer is not a TGI generate answer")
        answers.append(item)
    return answers


def _mean_logprob(sequence: Mapping[str, Any]) -> float:
    tokens = sequence.get("tokens")
    values = (
        [t["logprob"] for t in tokens if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float))]
        if isinstance(tokens, list)
        else []
    )
    return sum(values) / len(values) if values else float("-inf")


def _generated(details: Mapping[str, Any] | None) -> int:
    count = details.get("generated_tokens") if details else None
    return count if isinstance(count, int) else 0


class TGIAnswerMapper:
    """Maps TGI answers to OpenAI chat (``chat=True``) or legacy completion answers."""

    __slots__ = ("chat",)

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat

    def __call__(self, payload: Any, ctx: MappingContext) -> dict[str, Any]:
        answers = _answers(payload)
        state = state_of(ctx, self.chat, len(answers))
        if len(answers) != len(state.slots):
            raise UpstreamError(f"expected {len(state.slots)} answers from the model server, got {len(answers)}")
        choices: list[dict[str, Any]] = []
        prompt_tokens: dict[int, int] = {}
        completion_tokens = 0
        for i, answer in enumerate(answers):
            slot = state.slots[i]  # as many as the answers
            headers = ctx.reply_headers[i] if i < len(ctx.reply_headers) else _EMPTY
            details = answer.get("details")
            if not isinstance(details, dict):
                details = None
            if slot.prompt not in prompt_tokens:
                count = int_header(headers, "x-prompt-tokens")
                prefill = details.get("prefill") if details else None
                if count is None and isinstance(prefill, list) and prefill:
                    count = len(prefill)
                if count is not None:
                    prompt_tokens[slot.prompt] = count
            if details is None:
                completion_tokens += int_header(headers, "x-generated-tokens") or 0
            else:
                completion_tokens += _generated(details)
            sequences: list[tuple[str, Mapping[str, Any] | None]] = [(answer["generated_text"], details)]
            others = details.get("best_of_sequences") if details else None
            if isinstance(others, list):
                others = [s for s in others if isinstance(s, dict) and isinstance(s.get("generated_text"), str)]
                completion_tokens += sum(_generated(s) for s in others)
                others.sort(key=_mean_logprob, reverse=True)
                sequences.extend((s["generated_text"], s) for s in others[: slot.n - 1])
            prefix = state.prompts[slot.prompt] if state.echo and slot.prompt < len(state.prompts) else ""
            for k, (text, sequence) in enumerate(sequences):
                choices.append(self._choice(state, slot.choice + k, text, sequence, prefix))
        prompt_total = sum(prompt_tokens.values())
        body = envelope(state, "chat.completion" if self.chat else "text_completion")
        body["choices"] = choices
        body["usage"] = {
            "prompt_tokens": prompt_total,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_total + completion_tokens,
        }
        return body

    def _choice(
        self, state: RequestState, index: int, text: str, sequence: Mapping[str, Any] | None, prefix: str
    ) -> dict[str, Any]:
        reason = finish_reason(sequence.get("finish_reason")) if sequence else "stop"
        cut = earliest_stop(text, state.stops) if state.stops else -1
        if cut != -1:
            text = text[:cut]
            reason = "stop"
        logprobs: dict[str, Any] | None = None
        if state.logprobs is not None:
            builder: ChatLogprobs | TextLogprobs = (
                ChatLogprobs(state.logprobs) if self.chat else TextLogprobs(state.logprobs)
            )
            tokens = sequence.get("tokens") if sequence else None
            tops = sequence.get("top_tokens") if sequence else None
            if not isinstance(tops, list):
                tops = []
            offset = 0
            for t, token in enumerate(tokens if isinstance(tokens, list) else ()):
                if not isinstance(token, dict) or token.get("special"):
                    continue
                if cut != -1 and offset >= cut:
                    break  # the rest is the stop sequence, which is not returned
                builder.add(token, tops[t] if t < len(tops) else None, offset)  # echo with logprobs is refused
                piece = token.get("text")
                offset += len(piece) if isinstance(piece, str) else 0
            logprobs = builder.result()
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if state.tool_format is not None:
                parsed = parse_tool_calls(state.tool_format, text, state.tool_names)
                if parsed is not None:
                    message["content"] = parsed.content
                    message["tool_calls"] = [
                        {
                            "id": tool_call_id(state.tool_format),
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for call in parsed.calls
                    ]
                    reason = "tool_calls"
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}
        return {"text": prefix + text, "index": index, "logprobs": logprobs, "finish_reason": reason}

    def stream(self, ctx: MappingContext) -> StreamTranslator:
        """The translator of TGI ``/generate_stream`` events into OpenAI chunks."""
        return OpenAIStream(state_of(ctx, self.chat), ctx)

    def error(self, status: int, body: bytes, ctx: MappingContext) -> GatewayError | None:
        """A TGI error answer as an OpenAI error with a faithful status."""
        headers = ctx.reply_headers[-1] if ctx.reply_headers else None
        return status_error(status, body, headers, self.chat, translated=STATE_KEY in ctx.state)


#: ``chatAnsTGItoOpenAI``
chat_answer = TGIAnswerMapper(chat=True)
#: ``textAnsTGItoOpenAI``
text_answer = TGIAnswerMapper(chat=False)
