"""Requests to an OpenAI-compatible HTTP server (vLLM, SGLang, hosted APIs), many in flight, retried.

`ServerClient` runs an asyncio event loop on its own thread, so callers on any thread (the labelling loop,
serve's fallback thread) hand it a list of JSON bodies and block until every one has an answer or has failed.
Up to `concurrency` requests are in flight at once, optionally no more than `max_rps` started per second. Each
attempt has its own time limit; connection errors, time-outs, dropped connections, HTTP 429 (after the
server's `Retry-After`), 5xx and answers the caller's parser rejects are retried with exponential backoff and
jitter; other 4xx answers are not. A request that still fails is returned as a `RequestFailed`, not raised, so
one bad answer never stops a batch.

The API key goes only into the `Authorization` header, and a password in the URL only into HTTP basic auth;
neither is logged nor returned by `public_url`. This module knows nothing of teachers, prompts or classes.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from distill.errors import TeacherError

Parse = Callable[[dict[str, Any]], Any]


class RequestFailed(Exception):
    """A request that failed for good (after its retries, or with a 4xx that retrying cannot fix)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class BadAnswer(Exception):
    """Raised by a parser for an answer that is not what was asked for; the request is retried."""


def public_url(url: str) -> str:
    """`url` without user name, password, query or fragment: what may appear in logs, manifests and reports."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (a number of seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ServerClient:
    """Posts JSON to `{base_url}{path}` with retries; see the module docstring.

    Args:
        base_url: e.g. `http://127.0.0.1:8000/v1` (a `user:password@` part becomes HTTP basic auth).
        api_key: sent as `Authorization: Bearer ...`; None sends no key.
        concurrency: requests in flight at once.
        timeout_s: the limit for one attempt (connecting, waiting and reading).
        retries: attempts after the first one.
        max_rps: at most this many requests started per second (None: no limit).
        backoff_s: the first retry's delay; each later one doubles, up to `max_backoff_s`, with jitter.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 4,
        max_rps: float | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        try:
            import httpx  # noqa: F401
        except ImportError:
            raise TeacherError("the openai teacher needs httpx; pip install 'distill[openai]'") from None
        parts = urlsplit(base_url)
        self._auth = (parts.username or "", parts.password or "") if parts.username or parts.password else None
        self.base_url = public_url(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency, self.timeout_s, self.retries = concurrency, timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._interval = 1.0 / max_rps if max_rps else 0.0
        self._next_start = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="distill-openai-client", daemon=True)
        self._thread.start()
        self._client = self._call(self._make_client())
        self._slots = asyncio.Semaphore(concurrency)
        self._rate = asyncio.Lock()
        self.attempts = 0  # attempts made, retries included (for summaries and tests)

    async def _make_client(self) -> Any:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, auth=self._auth, limits=limits, timeout=self.timeout_s
        )

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def get(self, path: str) -> dict[str, Any]:
        """One GET without retries (start-up checks); raises `RequestFailed` with the status on an HTTP error."""
        return self._call(self._get(path))

    async def _get(self, path: str) -> dict[str, Any]:
        import httpx

        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise RequestFailed(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise RequestFailed(_error_text(response), response.status_code)
        try:
            return response.json()
        except ValueError:
            raise RequestFailed(f"GET {path} did not return JSON") from None

    def post_many(self, path: str, bodies: Sequence[dict[str, Any]], parse: Parse | Sequence[Parse]) -> list[Any]:
        """POST every body (up to `concurrency` at once); per body, `parse(json)` or the `RequestFailed`.

        `parse` is one parser for all bodies or one per body; it raises `BadAnswer` (or KeyError, IndexError,
        TypeError, ValueError) for an answer to retry.
        """
        parsers = list(parse) if isinstance(parse, Sequence) else [parse] * len(bodies)
        return self._call(self._post_all(path, bodies, parsers))

    async def _post_all(self, path: str, bodies: Sequence[dict[str, Any]], parsers: list[Parse]) -> list[Any]:
        return await asyncio.gather(*(self._post(path, b, p) for b, p in zip(bodies, parsers)))

    async def _post(self, path: str, body: dict[str, Any], parse: Parse) -> Any:
        reason, status = "", None
        for attempt in range(self.retries + 1):
            async with self._slots:
                await self._wait_rate()
                self.attempts += 1
                outcome = await self._attempt(path, body, parse)
            if not isinstance(outcome, _Retry):
                return outcome
            reason, status = outcome.reason, outcome.status
            if attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, outcome.after_s))
        return RequestFailed(f"{reason} (after {self.retries + 1} attempts)", status)

    async def _attempt(self, path: str, body: dict[str, Any], parse: Parse) -> Any:
        """The parsed answer, a `RequestFailed` (not worth retrying) or a `_Retry`."""
        import httpx

        try:
            response = await asyncio.wait_for(self._client.post(path, json=body), self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return _Retry(f"no answer within {self.timeout_s:g} s")
        except httpx.TransportError as exc:
            return _Retry(f"connection failed ({type(exc).__name__})")
        status = response.status_code
        if status == 429 or status >= 500:
            return _Retry(
                f"HTTP {status}: {_error_text(response)}", status, retry_after_s(response.headers.get("retry-after"))
            )
        if status >= 400:
            return RequestFailed(f"HTTP {status}: {_error_text(response)}", status)
        try:
            return parse(response.json())
        except ValueError:
            return _Retry("the answer is not JSON")
        except (BadAnswer, KeyError, IndexError, TypeError) as exc:
            return _Retry(f"unexpected answer ({type(exc).__name__}: {str(exc)[:120]})")

    async def _wait_rate(self) -> None:
        if not self._interval:
            return
        async with self._rate:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        await asyncio.sleep(start - now)

    def _delay(self, attempt: int, after_s: float | None) -> float:
        if after_s is not None:  # the server said when: honour it (capped, so a bad header cannot hang the run)
            return min(after_s, self.max_backoff_s)
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    def close(self) -> None:
        """Close connections and stop the loop thread; the client cannot be used afterwards."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()


class _Retry:
    def __init__(self, reason: str, status: int | None = None, after_s: float | None = None) -> None:
        self.reason, self.status, self.after_s = reason, status, after_s


def _error_text(response: Any) -> str:
    """The server's error message (OpenAI `{"error": {"message": ...}}`, or the body's first line), short."""
    try:
        data = response.json()
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        message = response.text
    lines = str(message or response.reason_phrase).strip().splitlines()
    return (lines[0] if lines else "")[:200]


def startup_error(url: str, model: str, exc: RequestFailed, key_env: str) -> TeacherError:
    """A one-line error for a server that cannot be used at all (unreachable, key refused, model unknown)."""
    where = public_url(url)
    if exc.status is None:
        return TeacherError(f"cannot reach the teacher server at {where} ({exc}); start it or fix --teacher-url")
    if exc.status in (401, 403):
        return TeacherError(
            f"the teacher server at {where} refused the API key (HTTP {exc.status}); "
            f"put a valid key in ${key_env} (or name another variable with --api-key-env)"
        )
    if exc.status == 404:
        return TeacherError(f"the teacher server at {where} has no OpenAI API there (HTTP 404); check --teacher-url")
    return TeacherError(f"the teacher server at {where} failed at start-up (HTTP {exc.status}: {exc}); check it")
