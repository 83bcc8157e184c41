"""A test server that answers OpenAI chat-completion requests the way vLLM serving PaliGemma does, with a toy
model whose exact class distribution the tests can compute, and faults on request.

What it copies from vLLM 0.32 (each seen on the real server): the text parts are concatenated (PaliGemma's
pass-through chat template) and "\\n" is appended to a prompt that does not end with one, also after a
prefilled answer; `prompt_logprobs` is a list with a null first entry, then dicts keyed by token-id strings
holding the prompt token and the top-k, image-token positions included; `top_logprobs`/`prompt_logprobs` above
20 or -1 are HTTP 400; `<eos>` appears as "<eos>"; generated `token_ids` end with EOS; under
`structured_outputs: {"choice": [...]}` the log-probs are renormalised over the allowed tokens, which include
non-canonical splits of the choices, and masked tokens show -9999. `hosted=True` instead answers like a hosted
API: unknown (vLLM-only) parameters are HTTP 400, nothing is appended, and a JSON-schema `response_format`
with an `answer` enum gives `{"answer": "<class>"}`.

The toy model (`ToyVLM`): greedy longest-match tokens over a small vocabulary (words, then single characters),
next-token log-probs from the previous two tokens and the image's mean colour. `class_probs` chains it exactly
as the server does, so tests know the distribution a client must reproduce.

Faults, consumed one per chat request in order (after the first `faults_after` requests): "429" (with
`Retry-After: 1`), "500", "drop" (the connection is closed without an answer), "stall" (no answer for
`stall_s`), "malformed" (a 200 with broken JSON), "outside" (the generated answer is a word outside the
classes). `fail_if(rgb)` makes every request for matching images HTTP 500. This module does not test anything.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

SPECIALS = ["<pad>", "<eos>", "<bos>", "\n", "<image>"]
WORDS = ["answer", " en", " which", " of", " these", " best", " describes", " the", " image", ":", ",", " or", "?"]
WORDS += ["cat", "dog", "bird", "idle", " warning", "run", "ning", "stop", "ped", " light", "red", "blue", "green"]
CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [" ", "-", "!", ".", "{", "}", '"']
JSON_HEAD, JSON_TAIL = '{"answer": "', '"}'  # around the value of a JSON-schema enum answer
IMAGE_TOKENS = 4
EOS, BOS, NEWLINE, IMAGE = 1, 2, 3, 4


class ToyVLM:
    """A deterministic next-token model over `SPECIALS + WORDS + CHARS` conditioned on an image's mean colour."""

    def __init__(self, seed: int = 0, scale: float = 2.0) -> None:
        self.vocab = SPECIALS + WORDS + CHARS
        self.index = {t: i for i, t in enumerate(self.vocab)}
        rng = np.random.default_rng(seed)
        v = len(self.vocab)
        self.prev1 = rng.normal(0, scale, (v, v))
        self.prev2 = rng.normal(0, scale / 2, (v, v))
        self.colour = rng.normal(0, scale / 3, (v, 3))
        words = [self.index[w] for w in WORDS]
        self.prev1[NEWLINE, words] += 3.0  # answers start with a word (a class, usually) ...
        self.prev1[np.ix_(words, [EOS])] += 9.0  # ... and often end after one, so EOS stays in the top 20
        for first, second in (("idle", " warning"), ("run", "ning"), ("stop", "ped")):  # or go on to a longer class
            self.prev1[self.index[first], self.index[second]] += 9.0

    def tokenize(self, text: str) -> list[int]:
        ids, i = [], 0
        pieces = sorted(self.vocab[3:], key=len, reverse=True)  # "\n", words, characters; longest first
        while i < len(text):
            piece = next((p for p in pieces if text.startswith(p, i)), None)
            if piece is None:
                raise ValueError(f"the toy vocabulary cannot spell {text[i]!r}")
            ids.append(self.index[piece])
            i += len(piece)
        return ids

    def logprobs(self, rgb_mean: np.ndarray, context: Sequence[int]) -> np.ndarray:
        """(V,) log-probs of the next token after `context`."""
        feat = (np.asarray(rgb_mean, np.float64) / 255.0 - 0.5) * 4
        before = context[-2] if len(context) > 1 else 0
        logits = self.prev1[context[-1]] + self.prev2[before] + self.colour @ feat
        logits = logits - logits.max()
        return logits - np.log(np.exp(logits).sum())

    def prompt_ids(self, text: str) -> list[int]:
        """What the server feeds the model: image tokens, <bos>, the text, and "\\n" unless it ends with one."""
        ids = [IMAGE] * IMAGE_TOKENS + [BOS] + self.tokenize(text)
        return ids if ids[-1] == NEWLINE else [*ids, NEWLINE]

    def class_probs(self, rgb: np.ndarray, prompt: str, texts: Sequence[str]) -> np.ndarray:
        """(K,) the exact class distribution: log p(class tokens + EOS | image, prompt), renormalised."""
        mean = rgb.reshape(-1, 3).mean(0)
        head = [IMAGE] * IMAGE_TOKENS + [BOS] + self.tokenize(prompt)
        scores = []
        for text in texts:
            ids = [*head, *self.tokenize(text)]
            tail = ids[len(head) :] + [EOS]
            ctx = ids[: len(head)]
            total = 0.0
            for tok in tail:
                total += self.logprobs(mean, ctx)[tok]
                ctx = [*ctx, tok]
            scores.append(total)
        e = np.exp(np.asarray(scores) - max(scores))
        return e / e.sum()


class FakeServer:
    """The server, on 127.0.0.1 and a free port, in a daemon thread. Use as a context manager."""

    def __init__(
        self,
        model: str = "toy-vlm",
        api_key: str | None = None,
        hosted: bool = False,
        seed: int = 4,  # a seed where the tests' frames resolve "idle" / "idle warning" both ways
        instant: bool = False,
        json_schema: bool = True,
    ) -> None:
        self.model, self.api_key, self.hosted, self.instant = model, api_key, hosted, instant
        self.json_schema = json_schema  # hosted: takes a JSON-schema response_format
        self.vlm = ToyVLM(seed)
        self.faults: list[str] = []
        self.faults_after = 0  # chat requests answered normally before the faults start (e.g. a client's probe)
        self.fail_if: Callable[[np.ndarray], bool] | None = None
        self.stall_s = 10.0
        self.chat_requests = 0
        self.faults_served: list[str] = []
        self.authorizations: set[str] = set()
        self.image_types: set[str] = set()  # the data URLs' media types
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._canned: bytes | None = None
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_fault(self) -> str | None:
        with self._lock:
            self.chat_requests += 1
            fault = self.faults.pop(0) if self.faults and self.chat_requests > self.faults_after else None
            if fault:
                self.faults_served.append(fault)
            return fault

    # --- answers ---------------------------------------------------------------------------------------------

    def chat(self, body: dict) -> tuple[int, dict]:
        if self.instant and self._canned is not None:
            return 200, self._canned  # type: ignore[return-value]
        for name in ("top_logprobs", "prompt_logprobs"):
            value = body.get(name)
            if value is not None and (value > 20 or value < 0):
                msg = f"Requested sample logprobs of {value}, which is greater than max allowed: 20"
                return 400, {"error": {"message": msg, "type": "BadRequestError", "param": name, "code": 400}}
        if self.hosted:
            extra = sorted(set(body) & {"prompt_logprobs", "continue_final_message", "structured_outputs"})
            extra += sorted(set(body) & {"return_token_ids", "add_generation_prompt", "return_tokens_as_token_ids"})
            extra += [] if self.json_schema else sorted(set(body) & {"response_format"})
            if extra:
                msg = f"Unrecognized request argument supplied: {extra[0]}"
                return 400, {"error": {"message": msg, "type": "invalid_request_error", "code": None}}
        rgb, text = self._read_messages(body)
        if self.fail_if is not None and self.fail_if(rgb):
            return 500, {"error": {"message": "injected failure for this image", "code": 500}}
        mean = rgb.reshape(-1, 3).mean(0)
        ids = [IMAGE] * IMAGE_TOKENS + [BOS] + self.vlm.tokenize(text)
        if not self.hosted and ids[-1] != NEWLINE:
            ids.append(NEWLINE)
        answer = self._generate(mean, ids, body)
        result = {"id": "chatcmpl-toy", "object": "chat.completion", "model": self.model, "choices": [answer]}
        if body.get("prompt_logprobs") is not None:
            result["prompt_logprobs"] = self._prompt_logprobs(mean, ids, body["prompt_logprobs"])
        if body.get("return_token_ids"):
            result["prompt_token_ids"] = ids
        if self.instant:
            self._canned = json.dumps(result).encode()  # type: ignore[assignment]
        return 200, result

    def _read_messages(self, body: dict) -> tuple[np.ndarray, str]:
        image, text = None, ""
        for message in body["messages"]:
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                if part["type"] == "text":
                    text += part["text"]
                elif part["type"] == "image_url":
                    head, body64 = part["image_url"]["url"].split(",", 1)
                    self.image_types.add(head.removeprefix("data:").split(";")[0])
                    data = base64.b64decode(body64)
                    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if image is None:
            raise ValueError("no image in the request")
        return image, text

    def _token(self, tok: int, as_ids: bool) -> str:
        return f"token_id:{tok}" if as_ids else self.vlm.vocab[tok]

    def _top(self, lp: np.ndarray, k: int, as_ids: bool) -> list[dict]:
        order = np.argsort(-lp, kind="stable")[:k]
        return [{"token": self._token(int(t), as_ids), "logprob": float(lp[t])} for t in order]

    def _allowed(self, generated: str, choices: Sequence[str]) -> np.ndarray:
        """Tokens a choice grammar admits after `generated`: any that keeps it a prefix of a choice (so
        non-canonical splits too), and EOS once it equals one."""
        ok = np.zeros(len(self.vlm.vocab), bool)
        for t, piece in enumerate(self.vlm.vocab[3:], start=3):
            ok[t] = any(c.startswith(generated + piece) for c in choices)
        ok[EOS] = generated in choices
        return ok

    def _generate(self, mean: np.ndarray, ids: list[int], body: dict) -> dict:
        """Greedy answer; under vLLM's `choice` or a JSON-schema enum (`{"answer": ...}`, its syntax forced)
        the value is constrained and its log-probs renormalised over the allowed tokens."""
        choices = (body.get("structured_outputs") or {}).get("choice")
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        enum = schema.get("properties", {}).get("answer", {}).get("enum")
        as_ids, k = bool(body.get("return_tokens_as_token_ids")), int(body.get("top_logprobs") or 0)
        ctx, out, content, text = list(ids), [], [], ""
        finish, budget = "length", int(body.get("max_tokens") or 16)

        def emit(tok: int, lp: np.ndarray) -> None:
            out.append(tok)
            item = {"token": self._token(tok, as_ids), "logprob": float(lp[tok])}
            content.append(item | {"top_logprobs": self._top(lp, k, as_ids)})
            ctx.append(tok)

        def forced(piece: str) -> None:
            for tok in self.vlm.tokenize(piece):
                emit(tok, np.where(np.arange(len(self.vlm.vocab)) == tok, 0.0, -9999.0))

        if enum:
            forced(JSON_HEAD)
        while len(out) < budget:
            lp = self.vlm.logprobs(mean, ctx)
            if choices or enum:
                allowed = self._allowed(text, choices or enum)
                lp = np.where(allowed, lp - np.log(np.exp(lp[allowed]).sum()), -9999.0)
            tok = int(np.argmax(lp))
            if tok == EOS and enum:
                forced(JSON_TAIL)
            emit(tok, lp)
            if tok == EOS:
                finish = "stop"
                break
            text += self.vlm.vocab[tok]
        if enum:
            text = JSON_HEAD + text + (JSON_TAIL if finish == "stop" else "")
        message = {"role": "assistant", "content": text}
        answer = {"index": 0, "message": message, "finish_reason": finish, "stop_reason": None}
        answer["logprobs"] = {"content": content} if body.get("logprobs") else None
        if body.get("return_token_ids"):
            answer["token_ids"] = out
        return answer

    def _prompt_logprobs(self, mean: np.ndarray, ids: list[int], k: int) -> list:
        result: list = [None]
        for i in range(1, len(ids)):
            lp = self.vlm.logprobs(mean, ids[:i])
            ranks = np.argsort(np.argsort(-lp, kind="stable"), kind="stable") + 1
            entry = {str(ids[i]): _item(lp, ranks, ids[i], self.vlm.vocab)}
            for t in np.argsort(-lp, kind="stable")[:k]:
                entry.setdefault(str(int(t)), _item(lp, ranks, int(t), self.vlm.vocab))
            result.append(entry)
        return result


def _item(lp: np.ndarray, ranks: np.ndarray, tok: int, vocab: list[str]) -> dict:
    return {"logprob": float(lp[tok]), "rank": int(ranks[tok]), "decoded_token": vocab[tok]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server_state: FakeServer

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a stalled answer
            self.close_connection = True

    def _authorised(self) -> bool:
        state = self.server_state
        header = self.headers.get("Authorization") or ""
        state.authorizations.add(header)
        if state.api_key and header != f"Bearer {state.api_key}":
            self._send(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server_state.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "Not Found"}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self._authorised():
            return
        state = self.server_state
        fault = state.next_fault()
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault == "stall":
            state._stop.wait(state.stall_s)
        if fault in ("429", "500"):
            error = {"error": {"message": f"injected {fault}", "code": int(fault)}}
            self._send(int(fault), error, {"Retry-After": "1"} if fault == "429" else None)
            return
        if fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-toy", "choices": [')
            return
        status, answer = state.chat(body)
        if fault == "outside" and status == 200:
            answer = json.loads(json.dumps(answer))
            answer["choices"][0]["message"]["content"] = "banana"
        self._send(status, answer)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll `predicate` until true or `timeout_s` passes; returns its last value."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def main() -> None:
    """`python tests/_openai_server.py [--instant] [--port N]`: serve until killed (bench/teacher.py --openai test)."""
    import argparse

    parser = argparse.ArgumentParser(description="the vLLM-like test server, standalone")
    parser.add_argument("--instant", action="store_true", help="answer every request with the first answer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeServer(instant=args.instant)
    if args.port:
        server.httpd.server_close()
        server.httpd = ThreadingHTTPServer(("127.0.0.1", args.port), server.httpd.RequestHandlerClass)
        server.httpd.daemon_threads = True
        server.url = f"http://127.0.0.1:{args.port}/v1"
    print(server.url, flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
