"""The `openai` teacher: a vision-language model behind an OpenAI-compatible server (vLLM, SGLang, hosted APIs).

Each frame is sent as it is (RGB pixels as a PNG or JPEG data URL, shrunk to `teacher.image_size` if set) with
the same prompt the in-process teacher uses, followed by "\\n" (PaliGemma's separator; harmless elsewhere).
Soft labels, `teacher.soft_labels`:
- `prompt-logprobs` (vLLM): one request per class with the class text prefilled as the assistant's answer;
  the prompt log-probs give log p(class tokens + end of answer), renormalised over the classes (the in-process
  teacher's quantity), and the label is the greedy walk of the class-token trie, as in-process. Needs no
  constraint: no text is generated.
- `first-token`: one request; the label is the generated answer (under the server's constraint where it has
  one: vLLM's `choice`, else a JSON-schema enum as hosted APIs take; validated anyway: an answer outside the
  classes is retried under a constraint, unmatched without one); the probabilities come from the first answer
  token's top-k (for JSON, the first token of the answer's value). Under a constraint the returned log-probs
  are renormalised over the allowed tokens, which leaves the ratios between classes, and so the renormalised
  class distribution, unchanged.
- `none`: the generated answer only; probabilities are one-hot and the label set says it is hard-labelled.
- `auto`: probe once at start: prompt-logprobs where the server can, else first-token, else none.

A start-up check stops the run with one line when the server is unreachable, refuses the key or does not serve
the model. Afterwards a frame whose requests fail for good is answered with a `TeacherFailure` (and listed in
`failures`); it is never guessed. The API key is read from the environment variable `teacher.api_key_env`
and goes nowhere else.

This module does not sample videos or store labels, and does not start or manage servers.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from distill.errors import TeacherError
from distill.label import _openai_answers as ans
from distill.label._openai_client import RequestFailed, ServerClient, public_url, startup_error
from distill.label._teacher import TeacherAnswer, TeacherFailure, build_prompt, match_class, one_hot, register_teacher
from distill.label._trie import ClassTrie

if TYPE_CHECKING:
    from distill.config import TaskConfig
    from distill.video import Frame

logger = logging.getLogger(__name__)

TOP_K = 20  # the most log-probs per position vLLM (its default --max-logprobs) and hosted APIs return
METHODS = ("auto", "prompt-logprobs", "first-token", "none")
_PATH = "/chat/completions"


def describe_openai(cfg: TaskConfig) -> dict[str, Any]:
    """backend, served model, soft-label method asked for, the server's URL (without credentials), prompt."""
    t = cfg.teacher
    return {
        "backend": "openai",
        "model": t.model,
        "mode": t.soft_labels,
        "url": public_url(t.url or ""),
        "prompt": build_prompt(cfg),
        "class_texts": [c.text for c in cfg.classes],
        "image_size": t.image_size,
    }


@dataclass
class _Plan:
    """What the start-up probe found out about the server."""

    method: str
    constraint: str | None = None  # "choice" (vLLM's structured_outputs), "json" (a JSON-schema enum), or none
    spans: list[ans.ClassSpan] = field(default_factory=list)  # prompt-logprobs: each class's tokens
    end_token: int = -1  # prompt-logprobs: the end-of-answer token
    trie: ClassTrie | None = None


class OpenAITeacher:
    """Labels frames through an OpenAI-compatible chat-completions server. Build with `build_openai(cfg)`.

    Attributes:
        failures: `(video, frame_index, reason)` of frames whose requests failed for good, over this teacher's
            life; such frames are answered with a `TeacherFailure`, not stored, and the next run labels them.
        approximate: answers whose soft labels were approximate (first-token: classes sharing a first token,
            longer than one token, or outside the top-k; prompt-logprobs: end token outside the top-k).
    """

    def __init__(self, cfg: TaskConfig, client: ServerClient) -> None:
        t = cfg.teacher
        self.classes: tuple[str, ...] = cfg.class_names
        self.texts = [c.text for c in cfg.classes]
        self.input_size: int | None = t.image_size
        self.model, self.max_new_tokens, self.image_format = t.model, t.max_new_tokens, t.image_format
        self.prompt = build_prompt(cfg) + "\n"
        self.client = client
        self.failures: list[tuple[str, int, str]] = []
        self.approximate = 0
        self._description = describe_openai(cfg)
        self.plan = self._probe(t.soft_labels)
        logger.info("openai teacher: %s, soft labels by %s", self.client.base_url, self.plan.method)

    def describe(self) -> dict[str, Any]:
        """The config's description plus, under `stats` (not compared on resume), what the server gave."""
        stats = {"soft_labels": self.plan.method, "hard_labels": self.plan.method == "none"}
        stats["constraint"] = self.plan.constraint
        return {**self._description, "stats": stats}

    def close(self) -> None:
        self.client.close()

    # --- requests -------------------------------------------------------------------------------------------

    def _image_url(self, frame: Frame) -> str:
        from distill.video import resize_short_side

        image = resize_short_side(frame.image, self.input_size) if self.input_size else frame.image
        ext, mime = (".jpg", "jpeg") if self.image_format == "jpeg" else (".png", "png")
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(image))  # BGR in; the file holds the RGB picture
        if not ok:
            raise TeacherError(f"cannot encode a frame of shape {image.shape} as {mime}")
        return f"data:image/{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")

    def _messages(self, url: str, answer: str | None = None) -> list[dict[str, Any]]:
        user = {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": self.prompt}],
        }
        return [user] if answer is None else [user, {"role": "assistant", "content": answer}]

    def _class_body(self, url: str, text: str) -> dict[str, Any]:
        """Score `text` as the answer: prefilled, continued by one token, with the prompt's log-probs."""
        return {
            "model": self.model,
            "messages": self._messages(url, text),
            "continue_final_message": True,
            "add_generation_prompt": False,
            "prompt_logprobs": TOP_K,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": TOP_K,
        }

    def _answer_body(self, url: str, logprobs: bool, constraint: str | None) -> dict[str, Any]:
        # A grammar admits non-canonical splits (one character a token at worst), JSON adds its syntax: room.
        longest = max(len(t) for t in self.texts) + (16 if constraint == "json" else 1) if constraint else 0
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(url),
            "max_tokens": max(self.max_new_tokens, longest),
            "temperature": 0,
        }
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": TOP_K}
        if constraint == "choice":
            body["structured_outputs"] = {"choice": list(self.texts)}
        elif constraint == "json":
            body["response_format"] = ans.json_enum_format(self.texts)
        return body

    # --- start-up -------------------------------------------------------------------------------------------

    def _probe(self, wanted: str) -> _Plan:
        """Check the server and find the best soft-label method it supports (`wanted`, or the best for auto)."""
        from distill.video import Frame

        side = self.input_size or 224
        url = self._image_url(Frame("probe", 0, 0.0, np.full((side, side, 3), 128, np.uint8)))
        if wanted in ("auto", "prompt-logprobs"):
            plan = self._probe_prompt_logprobs(url)
            if plan is not None:
                return plan
            if wanted == "prompt-logprobs":
                raise TeacherError(
                    f"the server at {self.client.base_url} does not return prompt log-probs for a prefilled answer "
                    "(vLLM does); use --soft-labels first-token or none"
                )
        logprobs = wanted in ("auto", "first-token")
        tries = [("choice", logprobs), ("json", logprobs), (None, logprobs), (None, False)]
        for constraint, lp in tries:
            result = self.client.post_many(_PATH, [self._answer_body(url, lp, constraint)], self._check(lp))[0]
            if not isinstance(result, RequestFailed):
                if logprobs and not lp and wanted == "first-token":
                    break
                return _Plan("first-token" if lp else "none", constraint=constraint)
            if result.status != 400:
                raise TeacherError(f"the server at {self.client.base_url} cannot answer: {result}; check it")
        raise TeacherError(
            f"the server at {self.client.base_url} returns no log-probs for answers; use --soft-labels none"
        )

    def _probe_prompt_logprobs(self, url: str) -> _Plan | None:
        """Find each class's tokens and the end-of-answer token; None if the server cannot do this."""
        # An answer that ends, to learn the end-of-answer token: under the choice constraint it must end.
        for constraint in ("choice", None):
            free = {**self._answer_body(url, False, constraint), "return_token_ids": True, "max_tokens": 32}
            done = self.client.post_many(_PATH, [free], lambda d: d)[0]
            if not isinstance(done, RequestFailed):
                break
        if isinstance(done, RequestFailed):
            return None
        choice = done["choices"][0]
        ids = choice.get("token_ids") or []
        if choice.get("finish_reason") != "stop" or choice.get("stop_reason") is not None or not ids:
            logger.info("prompt log-probs: cannot tell the end-of-answer token (%s)", choice.get("finish_reason"))
            return None
        bodies = [self._class_body(url, text) for text in self.texts]
        spans = self.client.post_many(_PATH, bodies, lambda d: d)
        found = []
        for text, data in zip(self.texts, spans):
            if isinstance(data, RequestFailed):
                return None
            try:
                found.append(ans.class_span(data, text))
            except ans.BadAnswer as exc:
                logger.info("prompt log-probs: %s", exc)
                return None
        end = int(ids[-1])
        trie = ClassTrie.build([list(s.ids) for s in found], eos=end, names=self.classes)
        return _Plan("prompt-logprobs", spans=found, end_token=end, trie=trie)

    def _check(self, logprobs: bool):
        """A parser that accepts an answer with text (and log-probs, if asked) and returns it as it is."""

        def check(data: dict[str, Any]) -> dict[str, Any]:
            ans.answer_text(data)
            if logprobs:
                data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return data

        return check

    # --- labelling ------------------------------------------------------------------------------------------

    def label(self, frames: Sequence[Frame]) -> list[TeacherAnswer | TeacherFailure]:
        """One answer per frame; a `TeacherFailure` for a frame whose requests failed for good."""
        if not frames:
            return []
        urls = [self._image_url(f) for f in frames]
        approximate = self.approximate
        if self.plan.method == "prompt-logprobs":
            answers = self._label_prompt_logprobs(urls)
        else:
            answers = self._label_answers(urls)
        for frame, answer in zip(frames, answers):
            if isinstance(answer, RequestFailed):
                self.failures.append((frame.video, frame.frame_index, str(answer)))
        if approximate == 0 < self.approximate:
            logger.warning(
                "%s soft labels are approximate for some frames (a class, or the end of an answer, outside the "
                "server's top %d, or classes sharing a first token); the teacher counts them",
                self.plan.method,
                TOP_K,
            )
        return [TeacherFailure(str(a)) if isinstance(a, RequestFailed) else a for a in answers]

    def _label_prompt_logprobs(self, urls: list[str]) -> list[TeacherAnswer | RequestFailed]:
        plan, k = self.plan, len(self.texts)
        assert plan.trie is not None
        spans, end, trie = plan.spans, plan.end_token, plan.trie

        def parse(j: int):
            return lambda data: ans.class_logprobs(data, spans[j], end, TOP_K)

        bodies = [self._class_body(url, text) for url in urls for text in self.texts]
        results = self.client.post_many(_PATH, bodies, [parse(j) for _ in urls for j in range(k)])
        answers: list[TeacherAnswer | RequestFailed] = []
        width = trie.slot_tokens.shape[1]
        for i in range(len(urls)):
            per_class = results[i * k : (i + 1) * k]
            failed = next((r for r in per_class if isinstance(r, RequestFailed)), None)
            if failed is not None:
                answers.append(failed)
                continue
            slot_lp = np.zeros(trie.num_nodes * width + 1, np.float64)  # (N * A + 1,) last: padding
            for j, (lps, end_lp, _) in enumerate(per_class):
                slot_lp[trie.class_slots[j, : len(lps) + 1]] = [*lps, end_lp]
            self.approximate += not all(exact for _, _, exact in per_class)
            slot_lp = slot_lp[:-1].reshape(1, trie.num_nodes, width)
            scores = trie.scores(slot_lp)[0]  # (K,) log p(class tokens + end)
            best = int(trie.greedy(slot_lp)[0])
            answers.append(TeacherAnswer(self.classes[best], ans.softmax(scores), self.texts[best]))
        return answers

    def _label_answers(self, urls: list[str]) -> list[TeacherAnswer | RequestFailed]:
        logprobs, constraint = self.plan.method == "first-token", self.plan.constraint

        def parse(data: dict[str, Any]) -> TeacherAnswer:
            raw = ans.answer_text(data, constraint == "json").strip()
            k = match_class(raw, self.classes, self.texts)
            if k is None and constraint:
                raise ans.BadAnswer(f"answer {raw[:40]!r} is outside the classes despite the constraint")
            label = None if k is None else self.classes[k]
            if not logprobs:
                return TeacherAnswer(label, one_hot(k, len(self.classes)), raw)
            top = ans.answer_top_logprobs(data, constraint == "json")
            first = ans.first_token_logprobs(top, self.texts)
            self.approximate += not first.exact
            return TeacherAnswer(label, ans.softmax(first.logprobs), raw)

        bodies = [self._answer_body(url, logprobs, constraint) for url in urls]
        return self.client.post_many(_PATH, bodies, parse)


def api_key(cfg: TaskConfig) -> str | None:
    """The API key from the environment variable `teacher.api_key_env` (None if unset: no key is sent)."""
    return os.environ.get(cfg.teacher.api_key_env) or None


def build_openai(cfg: TaskConfig, *, root: Any = None) -> OpenAITeacher:
    """Connect to `teacher.url`, check the key and the model, probe the soft-label method; see the module doc."""
    t = cfg.teacher
    if not t.url:
        raise TeacherError("--teacher openai needs --teacher-url, e.g. http://127.0.0.1:8000/v1")
    client = ServerClient(
        t.url, api_key(cfg), concurrency=t.concurrency, timeout_s=t.timeout_s, retries=t.retries, max_rps=t.max_rps
    )
    try:
        models = client.get("/models")
        data = models.get("data") if isinstance(models, dict) else None
        served = [str(m.get("id")) for m in data or [] if isinstance(m, dict)]
        if t.model not in served:
            raise TeacherError(
                f"the server at {client.base_url} does not serve {t.model!r} "
                f"(it serves: {', '.join(served) or 'none'}); pass --teacher-model with one of those"
            )
        return OpenAITeacher(cfg, client)
    except RequestFailed as exc:
        client.close()
        raise startup_error(t.url, t.model, exc, t.api_key_env) from None
    except BaseException:
        client.close()
        raise


register_teacher("openai", build=build_openai, describe=describe_openai, input_size=lambda cfg: cfg.teacher.image_size)
