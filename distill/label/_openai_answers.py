"""Reading class probabilities out of an OpenAI-compatible server's answers (pure functions over JSON).

Two ways, as exact as the server allows:
- `prompt-logprobs` (vLLM): the answer is sent as the assistant's message, to be continued; vLLM returns
  `prompt_logprobs`, one entry per prompt token (entry 0 is null; image tokens are included), each a dict keyed
  by token-id strings holding the prompt token itself and the top-k. The class's tokens are the last ones
  before any token the server appended (vLLM's PaliGemma processor appends "\\n" to a prompt that does not end
  with one); the end-of-answer token's log-prob comes from the top-k at the position right after the class, or
  from the first generated token's top-k when nothing was appended. `class_span` finds those tokens once, at
  start-up; `class_logprobs` reads them for every frame. Together they give log p(class tokens + end), the
  quantity the in-process teacher computes.
- `first-token`: the top-k log-probs of the first answer token (`first_token_logprobs`). Exact only when every
  class is one token and the tokens differ; otherwise, or where a class is outside the top-k (its log-prob is
  then bounded by the k-th), the result says it is approximate.

A parser raises `BadAnswer` for an answer that does not have the expected shape, so the request is retried.
This module sends no request and holds no state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.label._openai_client import BadAnswer


def _key(text: str) -> str:
    """Text compared without case, spaces or SentencePiece's word marker (`" Idle▁warning"` -> `"idlewarning"`)."""
    return "".join(text.replace("▁", " ").split()).lower()


def _entry(data: dict[str, Any]) -> tuple[list[int], list[Any]]:
    ids, entries = data.get("prompt_token_ids"), data.get("prompt_logprobs")
    if not isinstance(ids, list) or not isinstance(entries, list) or len(ids) != len(entries) or len(ids) < 2:
        raise BadAnswer("no prompt_token_ids / prompt_logprobs of equal length in the answer")
    return ids, entries


def _token_text(entries: list[Any], ids: list[int], i: int) -> str:
    entry = entries[i] or {}
    item = entry.get(str(ids[i]))
    if not isinstance(item, dict):
        raise BadAnswer(f"prompt_logprobs[{i}] lacks the prompt token {ids[i]}")
    return str(item.get("decoded_token") or "")


@dataclass(frozen=True)
class ClassSpan:
    """Where a class's tokens sit in the server's prompt: `ids` end `tail` tokens before the prompt's end."""

    ids: tuple[int, ...]
    tail: int


def class_span(data: dict[str, Any], text: str) -> ClassSpan:
    """Find the tokens of the prefilled answer `text` at the end of the prompt (walking back over appended
    whitespace tokens, then over tokens until their decoded text spells `text`)."""
    ids, entries = _entry(data)
    end = len(ids)
    while end > 1 and not _token_text(entries, ids, end - 1).strip():
        end -= 1
    target, start, spelled = _key(text), end, ""
    while start > 1 and len(spelled) < len(target):
        start -= 1
        spelled = _key(_token_text(entries, ids, start)) + spelled
    if spelled != target:
        raise BadAnswer(f"the prompt does not end with the answer {text!r} (found {spelled!r})")
    return ClassSpan(tuple(int(t) for t in ids[start:end]), len(ids) - end)


def _logprob(entry: Any, token: int) -> float | None:
    item = (entry or {}).get(str(token))
    return None if not isinstance(item, dict) else float(item["logprob"])


def class_logprobs(
    data: dict[str, Any], span: ClassSpan, end_token: int, top_k: int
) -> tuple[list[float], float, bool]:
    """(log-prob of each class token, log-prob of the end token after them, whether that one is exact).

    The end token's log-prob is read at the position after the class (an appended token's entry), or from the
    generated token's top-k (tokens given as `token_id:N`) when the server appended nothing. Where it is not
    in the top-`top_k`, the k-th largest log-prob bounds it from above: that value is returned, flagged inexact
    (an entry may also hold the prompt token itself below the top-k, which is why the k-th and not the least).
    """
    ids, entries = _entry(data)
    stop = len(ids) - span.tail
    start = stop - len(span.ids)
    if start < 1 or tuple(ids[start:stop]) != span.ids:
        raise BadAnswer("the prompt's answer tokens differ from those found at start-up")
    lps = []
    for i in range(start, stop):
        lp = _logprob(entries[i], ids[i])
        if lp is None:
            raise BadAnswer(f"prompt_logprobs[{i}] lacks its token")
        lps.append(lp)
    if span.tail:
        top = {int(k): float(v["logprob"]) for k, v in (entries[stop] or {}).items()}
    else:
        content = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        top = {int(str(t["token"]).split(":", 1)[1]): float(t["logprob"]) for t in content}
    if not top:
        raise BadAnswer("no top-k log-probs after the answer")
    if end_token in top:
        return lps, top[end_token], True
    ranked = sorted(top.values(), reverse=True)
    return lps, ranked[min(top_k, len(ranked)) - 1], False


@dataclass(frozen=True)
class FirstToken:
    """Class log-probs read from the first answer token's top-k; `exact` False where they are approximate."""

    logprobs: np.ndarray  # (K,)
    exact: bool


def first_token_logprobs(top: Sequence[dict[str, Any]], texts: Sequence[str]) -> FirstToken:
    """Each class's log-prob from the first answer token's `top_logprobs` (`[{"token", "logprob"}, ...]`).

    A class takes the longest top-k token its text starts with (the whole text when that is one token). Exact
    when every class is one whole token, distinct from the others; a class with no token in the top-k gets the
    k-th log-prob (an upper bound) and makes the result approximate.
    """
    pairs = [(_key(str(t.get("token", ""))), float(t["logprob"])) for t in top]
    pairs = [(k, lp) for k, lp in pairs if k and lp > -9000]  # vLLM shows masked tokens as -9999
    if not pairs:
        raise BadAnswer("no usable top_logprobs for the first answer token")
    floor = min(lp for _, lp in pairs)
    values, chosen, exact = [], [], True
    for text in texts:
        target = _key(text)
        hits = [(len(k), k, lp) for k, lp in pairs if target.startswith(k)]
        if not hits:
            values.append(floor)
            exact = False
            continue
        _, token, lp = max(hits)
        values.append(lp)
        chosen.append(token)
        exact &= token == target
    exact &= len(set(chosen)) == len(chosen)
    return FirstToken(np.asarray(values, np.float64), exact)


def softmax(logprobs: np.ndarray) -> np.ndarray:
    """(K,) float32 probabilities from (K,) log-scores."""
    e = np.exp(logprobs - np.max(logprobs))
    return (e / e.sum()).astype(np.float32)


def answer_text(data: dict[str, Any], json_answer: bool = False) -> str:
    """The generated text of the first choice (with `json_answer`, the `answer` field of the JSON it holds)."""
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise BadAnswer("the answer has no text")
    if not json_answer:
        return content
    try:
        value = json.loads(content)["answer"]
    except (ValueError, KeyError, TypeError):
        raise BadAnswer(f"the answer {content[:60]!r} is not the JSON asked for") from None
    return str(value)


def json_enum_format(texts: Sequence[str]) -> dict[str, Any]:
    """A `response_format` that constrains the answer to `{"answer": <one of texts>}` (a JSON-schema enum)."""
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": list(texts)}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}


def answer_top_logprobs(data: dict[str, Any], json_answer: bool = False) -> list[dict[str, Any]]:
    """The top-k of the answer's first token: the first generated token, or, in a JSON answer, the token where
    the `answer` value starts (a quote merged into that token is dropped from every candidate)."""
    content = data["choices"][0]["logprobs"]["content"]
    if not json_answer:
        return content[0]["top_logprobs"]
    text = "".join(str(t["token"]) for t in content)
    key = text.find('"answer"')
    start = text.find('"', text.find(":", key) + 1) + 1 if key >= 0 else 0
    if key < 0 or start <= 0:
        raise BadAnswer("no answer value in the JSON's tokens")
    offset = 0
    for token in content:
        offset += len(str(token["token"]))
        if offset > start:
            return [{**t, "token": str(t["token"]).lstrip(' "')} for t in token["top_logprobs"]]
    raise BadAnswer("the JSON answer's value has no token")
