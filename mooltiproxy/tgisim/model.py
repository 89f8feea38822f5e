"""The simulator's deterministic fake model: a tokenizer and a steerable generator. Pure code, no I/O.

Tokens: a word with its leading space, one punctuation character (optionally after a space), a newline, or a
run of other whitespace. Concatenating the tokens of a text gives the text back. A prompt counts one more token
for the BOS token ``<s>`` (id 1); generations end with the special EOS token ``</s>`` (id 2).

Prompt directives (anywhere in ``inputs``; the last one of each kind wins):

* ``<<say:TEXT>>``      answer exactly TEXT, then EOS;
* ``<<tokens:N>>``      answer N filler word tokens (`` w1 w2 …``), then EOS;
* ``<<delay:MS>>``      wait MS milliseconds before each token (overrides the server's token delay);
* ``<<error_after:N>>`` fail with ``Request failed during generation: simulated failure`` after N tokens;
* ``<<overloaded>>``    the server answers ``Model is overloaded`` (429) as if no slot were free.

Without ``<<say>>``/``<<tokens>>`` the answer is ``"<greeting> I am a simulated model. You said: <words>"`` where
``<words>`` are the first words of the prompt's last line. The greeting is "Hello!" unless the request samples
with an explicit ``seed`` (or is a ``best_of`` candidate): then it depends on the seed.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BOS",
    "EOS",
    "Directives",
    "Generation",
    "Token",
    "count_tokens",
    "generate",
    "is_sampling",
    "parse_directives",
    "tokenize",
]

_TOKEN_RE = re.compile(r"\n| ?\w+| ?[^\w\s]|[^\S\n]+")
_DIRECTIVE_RE = re.compile(r"<<(say|tokens|delay|error_after|overloaded)(?::(.*?))?>>", re.DOTALL)
_GREETINGS = ("Hello!", "Hi there!", "Greetings!", "Hey!")
_VOCAB = 32000
_MAX_WORDS = 8
SIMULATED_FAILURE = "simulated failure"


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logprob: float | None
    special: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}

    def as_prefill(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob}


BOS = Token(1, "<s>", None, True)
EOS = Token(2, "</s>", None, True)


def tokenize(text: str) -> list[str]:
    """The token texts of ``text`` (no BOS)."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Prompt length in tokens: the tokens of ``text`` plus one for BOS."""
    return len(_TOKEN_RE.findall(text)) + 1


def token_id(text: str) -> int:
    """A stable id for a token text, never one of the special ids 0–2."""
    return 3 + zlib.crc32(text.encode("utf-8")) % (_VOCAB - 3)


@dataclass(frozen=True)
class Directives:
    say: str | None = None
    tokens: int | None = None
    delay_ms: float | None = None
    error_after: int | None = None
    overloaded: bool = False


def parse_directives(inputs: str) -> Directives:
    if "<<" not in inputs:
        return Directives()
    found: dict[str, str] = {}
    for m in _DIRECTIVE_RE.finditer(inputs):
        found[m.group(1)] = m.group(2) or ""
    return Directives(
        say=found.get("say"),
        tokens=_number(found.get("tokens"), int),
        delay_ms=_number(found.get("delay"), float),
        error_after=_number(found.get("error_after"), int),
        overloaded="overloaded" in found,
    )


def _number(text: str | None, kind: type[int] | type[float]) -> Any:
    if text is None:
        return None
    try:
        value = kind(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def is_sampling(params: dict[str, Any]) -> bool:
    """Whether the model samples: ``do_sample`` or any active warper (as the model server decides)."""
    temperature, top_k = params.get("temperature"), params.get("top_k")
    top_p, typical_p = params.get("top_p"), params.get("typical_p")
    return bool(
        params.get("do_sample")
        or (temperature is not None and temperature != 1.0)
        or (top_k is not None and top_k != 0)
        or (top_p is not None and top_p < 1.0)
        or (typical_p is not None and typical_p < 1.0)
    )


_MARKUP_RE = re.compile(r"<\|[^|<>]*\|>|</?s>|\[/?INST\]|<<SYS>>|<</SYS>>")
_ROLE_RE = re.compile(r"\s*(?:###\s*)?(?:system|user|assistant|model|human|response)\s*:?\s*", re.I)


def default_answer(inputs: str, variant: int = 0) -> str:
    # Chat templates end the prompt with markers and a role header: quote the last line a person wrote.
    plain = _MARKUP_RE.sub("\n", _DIRECTIVE_RE.sub("", inputs))
    lines = [line for line in plain.splitlines() if re.search(r"\w", line) and not _ROLE_RE.fullmatch(line)]
    words = lines[-1].split()[:_MAX_WORDS] if lines else []
    greeting = _GREETINGS[variant % len(_GREETINGS)]
    said = f" You said: {' '.join(words)}" if words else ""
    return f"{greeting} I am a simulated model.{said}"


def logprob(index: int, variant: int = 0) -> float:
    return round(-0.1 * (index % 10 + 1) - 0.01 * variant, 4)


@dataclass
class Generation:
    """One generated sequence. ``error`` is set when the generation failed after ``len(tokens)`` tokens."""

    tokens: list[Token]
    finish_reason: str
    generated_text: str
    seed: int | None
    input_length: int
    prefill: list[Token] = field(default_factory=list)
    top_tokens: list[list[Token]] = field(default_factory=list)
    error: str | None = None

    @property
    def mean_logprob(self) -> float:
        values = [t.logprob for t in self.tokens if t.logprob is not None]
        return sum(values) / len(values) if values else 0.0


def _answer(inputs: str, directives: Directives, variant: int, limit: int) -> str:
    if directives.say is not None:
        return directives.say
    if directives.tokens is not None:
        return "".join(f" w{i + 1}" for i in range(min(directives.tokens, limit)))
    return default_answer(inputs, variant)


def _top(chosen: Token, n: int) -> list[Token]:
    alternatives = [
        Token(3 + (chosen.id + 7919 * k) % (_VOCAB - 3), f" alt{k}", round((chosen.logprob or 0.0) - 0.5 * k, 4))
        for k in range(1, n)
    ]
    return [chosen, *alternatives]


def _prefill(inputs: str, input_length: int) -> list[Token]:
    texts = tokenize(inputs)
    tokens = [BOS] + [Token(token_id(t), t, round(2 * logprob(i + 1), 4)) for i, t in enumerate(texts)]
    tokens = tokens[-input_length:] if input_length > 0 else []
    if tokens:
        tokens[0] = Token(tokens[0].id, tokens[0].text, None, tokens[0].special)
    return tokens


def generate(
    request: dict[str, Any],
    *,
    input_length: int | None = None,
    max_total_tokens: int = 4096,
    variant: int | None = None,
    fallback_seed: int = 0,
) -> Generation:
    """Generates one sequence for a parsed (and validated) request.

    ``variant`` picks a best_of candidate; ``fallback_seed`` is the seed reported when the request samples
    without a seed of its own (TGI draws a random one).
    """
    inputs: str = request["inputs"]
    params: dict[str, Any] = request.get("parameters") or {}
    if input_length is None:
        truncate = params.get("truncate")
        input_length = count_tokens(inputs) if not truncate else min(truncate, count_tokens(inputs))
    directives = parse_directives(inputs)
    sampling = is_sampling(params)
    given_seed = params.get("seed")
    seed = (given_seed if given_seed is not None else fallback_seed) if sampling else None
    if variant is None:
        variant = given_seed % len(_GREETINGS) if sampling and given_seed is not None else 0
    max_new = params.get("max_new_tokens")
    limit = max(max_new if max_new is not None else max_total_tokens - input_length, 1)
    answer = [Token(token_id(t), t, 0.0) for t in tokenize(_answer(inputs, directives, variant, limit))]
    stops = [s for s in params.get("stop") or [] if isinstance(s, str)]
    top_n = params.get("top_n_tokens") or 0

    tokens: list[Token] = []
    text = ""
    finish = "length"
    error: str | None = None
    while True:
        i = len(tokens)
        if directives.error_after is not None and i == directives.error_after:
            error = SIMULATED_FAILURE
            break
        base = answer[i] if i < len(answer) else EOS
        tok = Token(base.id, base.text, logprob(i, variant), base.special)
        tokens.append(tok)
        if not tok.special:
            text += tok.text
        if len(tokens) >= limit:
            finish = "length"
            break
        if tok.special:
            finish = "eos_token"
            break
        if stops and any(text.endswith(s) for s in stops):
            finish = "stop_sequence"
            break
    generated = text
    if params.get("return_full_text"):
        generated = inputs + generated
    return Generation(
        tokens=tokens,
        finish_reason=finish,
        generated_text=generated,
        seed=seed,
        input_length=input_length,
        prefill=_prefill(inputs, input_length) if params.get("decoder_input_details") else [],
        top_tokens=[_top(t, top_n) for t in tokens] if top_n > 0 else [],
        error=error,
    )
