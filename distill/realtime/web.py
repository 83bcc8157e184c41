"""The web view of a serving run: one page, a JSON API, Server-Sent Events, MJPEG streams, Prometheus metrics.

```
GET /                        the live page (package data, no build step, no CDN)
GET /api/sources             JSON: every source's label, confidence, who gave it, stats, recent timeline
GET /api/events              Server-Sent Events: the run's events (as `--events` writes them), numbered
GET /stream/<n>.mjpg         MJPEG of source n with its label drawn (`<n>.jpg`: the newest frame, once)
GET /metrics                 Prometheus text format
GET /healthz                 `ok`
```
With a token every request needs it: `Authorization: Bearer TOKEN`, `?token=TOKEN`, or the cookie that
opening `/?token=TOKEN` sets (so the page's images and event stream carry it). Errors are one line of text.

Uvicorn runs the app on its own thread and event loop. Handlers only read the run's state (`Board`,
`EventFeed`) and never wait on a worker: a client gets the newest frame when it is ready for one, each frame
is JPEG-encoded at most once and only while someone watches, and a client that stops reading only stalls its
own connection. `WebServer.stop` is set once the run's other threads have ended: event streams send what is
left and end, MJPEG streams end, clients that read nothing are cut, and the thread ends within half a second.

This module does not decide labels or run the serving threads; `distill.realtime.serve` starts it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from distill.config import parse_http_address
from distill.errors import ConfigError
from distill.realtime._state import Workers
from distill.realtime.inference import Shown
from distill.realtime.live import Board, EventFeed, JpegCache, RateWindow, RunBoard
from distill.realtime.metrics import serving_registry

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "distill_token"
FRAME_POLL_S = 0.01  # how often new frames are looked for while a stream client waits (frames come every 40 ms)
EVENT_POLL_S = 0.05
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream
STOP_POLL_S = 0.05
GRACE_S = 0.15  # after the stop, connections still open (clients that read nothing) are cut
BOUNDARY = "frame"
NO_STORE = {"Cache-Control": "no-store"}


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class Frames:
    """New-frame notices and JPEGs for stream clients: one poll of the shown slots serves every client."""

    def __init__(self, board: Board, count: int, stop: threading.Event) -> None:
        self.board = board
        self.stop = stop
        self.caches = [JpegCache() for _ in range(count)]
        self.seen: list[Shown | None] = [None] * count
        self._locks = [asyncio.Lock() for _ in range(count)]
        self._changed = asyncio.Condition()
        self._waiting = 0
        self._poller: asyncio.Task[None] | None = None

    async def next(self, number: int, last: Shown | None) -> Shown | None:
        """The source's shown frame once it differs from `last` (None when the run stops)."""
        self._waiting += 1
        if last is None:  # a new client: the poller may have been idle, so what it saw last can be old
            self.seen[number] = self.board.shown(number)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self.stop.is_set() or _fresh(self.seen[number], last))
        finally:
            self._waiting -= 1
        return None if self.stop.is_set() else self.seen[number]

    async def jpeg(self, number: int, shown: Shown) -> bytes:
        """The frame as a JPEG; the first client to ask encodes it (off the event loop), the rest reuse it."""
        if (jpeg := self.caches[number].cached(shown)) is not None:
            return jpeg
        async with self._locks[number]:
            return await asyncio.to_thread(self.caches[number].get, shown)

    async def _poll(self) -> None:
        while self._waiting and not self.stop.is_set():
            fresh = [self.board.shown(i) for i in range(len(self.seen))]
            if any(f is not s for f, s in zip(fresh, self.seen)):
                self.seen = fresh
                async with self._changed:
                    self._changed.notify_all()
            await asyncio.sleep(FRAME_POLL_S)
        self._poller = None  # before any await: a client that comes after this line starts a new poller
        async with self._changed:
            self._changed.notify_all()  # on stop: wake every waiting client so its stream ends


def _fresh(shown: Shown | None, last: Shown | None) -> bool:
    return shown is not None and shown is not last  # identity: frames are new objects, never compared by value


def create_app(board: Board, feed: EventFeed, stop: threading.Event, token: str | None = None) -> ASGIApp:
    """The ASGI app of the web view (routes behind the token check)."""
    page = resources.files("distill.realtime").joinpath("static/index.html").read_text(encoding="utf-8")
    count = len(board.counters())
    frames = Frames(board, count, stop)
    window = RateWindow(board)
    registry = serving_registry(board)

    async def index(request: Request) -> Response:
        response = HTMLResponse(page, headers=NO_STORE)
        if token is not None and hmac.compare_digest(request.query_params.get("token", "").encode(), token.encode()):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    async def api_sources(request: Request) -> Response:
        return JSONResponse(sources_payload(board, feed, window), headers=NO_STORE)

    async def api_events(request: Request) -> Response:
        after = request.headers.get("last-event-id") or request.query_params.get("after")
        try:
            start = feed.last if after is None else int(after)
        except ValueError:
            return _line(400, f"after must be an event number (got {after!r}); omit it to get new events only")
        return StreamingResponse(_events(feed, start, stop), media_type="text/event-stream", headers=NO_STORE)

    async def stream(request: Request) -> Response:
        name = request.path_params["name"]
        number, _, kind = name.partition(".")
        if not number.isdigit() or int(number) >= count or kind not in ("mjpg", "jpg"):
            return _line(404, f"no stream {name!r}; sources are /stream/0.mjpg .. /stream/{count - 1}.mjpg")
        number_i = int(number)
        if kind == "jpg":
            shown = board.shown(number_i)
            if shown is None:
                return _line(503, f"source {number_i} has shown no frame yet; try again shortly")
            return Response(await frames.jpeg(number_i, shown), media_type="image/jpeg", headers=NO_STORE)
        content_type = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        return StreamingResponse(_mjpeg(frames, number_i), media_type=content_type, headers=NO_STORE)

    async def metrics(request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST, **NO_STORE})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=NO_STORE)

    routes = [
        Route("/", index),
        Route("/api/sources", api_sources),
        Route("/api/events", api_events),
        Route("/stream/{name}", stream),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.frames = frames
    return TokenCheck(app, token) if token else app


def sources_payload(board: Board, feed: EventFeed, window: RateWindow) -> dict[str, Any]:
    """The JSON of `/api/sources`."""
    counters = board.counters()
    rates = window.rates(counters)
    out = []
    for i, (c, r) in enumerate(zip(counters, rates)):
        shown = board.shown(i)
        out.append(
            {
                "id": i,
                "name": c.name,
                "kind": c.kind,
                "status": c.status,
                "label": shown.label if shown else None,
                "confidence": round(shown.confidence, 4) if shown else None,
                "by": shown.by if shown else None,
                "student_label": shown.student_label if shown else None,
                "frame": shown.frame.index if shown else None,
                "stats": {
                    "capture_fps": r.capture_fps,
                    "inference_fps": r.inference_fps,
                    "latency_ms": {"p50": r.p50_ms, "p95": r.p95_ms},
                    "captured": c.captured,
                    "classified": c.classified,
                    "dropped": c.dropped,
                    "fallbacks": c.fallbacks,
                    "reconnects": c.reconnects,
                    "label_changes": c.changes,
                },
                "timeline": [[round(t, 3), label, by] for t, label, by in feed.timeline(i)],
                "stream": f"/stream/{i}.mjpg",
            }
        )
    return {"classes": list(board.classes), "now": round(time.time(), 3), "sources": out}


async def _events(feed: EventFeed, after: int, stop: threading.Event) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    last, quiet = after, 0.0
    while True:
        stopping = stop.is_set()  # read before the last look: what was published before the stop is sent
        new = feed.since(last)
        for number, record in new:
            data = json.dumps(record, separators=(",", ":"))
            yield f"id: {number}\nevent: {record.get('event', 'message')}\ndata: {data}\n\n".encode()
        if stopping:
            return
        if new:
            last, quiet = new[-1][0], 0.0
        else:
            quiet += EVENT_POLL_S
            if quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield b": keep-alive\n\n"
        await asyncio.sleep(EVENT_POLL_S)


async def _mjpeg(frames: Frames, number: int) -> AsyncIterator[bytes]:
    last: Shown | None = None
    while (shown := await frames.next(number, last)) is not None:
        jpeg = await frames.jpeg(number, shown)
        last = shown
        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
        yield head + jpeg + b"\r\n"


def _line(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _line(404, f"not found: {request.url.path}; the API is /, /api/sources, /api/events, "
                          "/stream/<n>.mjpg, /metrics, /healthz")  # fmt: skip
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "GET")
        return _line(405, f"method {request.method} not allowed on {request.url.path}; use {allow}", exc.headers)
    return _line(exc.status_code, str(exc.detail))


class TokenCheck:
    """ASGI middleware: every request must carry the token (header, query or cookie), else 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(Request(scope)):
            response = _line(
                401,
                "missing or wrong token; pass Authorization: Bearer TOKEN or ?token=TOKEN (the --http-token value)",
                {"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        given = [auth[7:] if auth[:7].lower() == "bearer " else None]
        given += [request.query_params.get("token"), request.cookies.get(TOKEN_COOKIE)]
        return any(g is not None and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)


class WebServer:
    """Uvicorn serving `create_app(...)` on its own thread until `stop` is set.

    The socket is bound here, on the caller's thread, so a busy port fails early with a clear error; `run` is
    the thread body, and `stop` (an Event of its own) ends it: the caller sets it once nothing more will be
    published, so event streams deliver everything up to the end of the run.

    Raises:
        ConfigError: the address cannot be bound.
    """

    def __init__(self, board: Board, feed: EventFeed, host: str, port: int, token: str | None = None) -> None:
        import uvicorn

        self.stop = threading.Event()
        try:
            self.socket = socket.create_server((host, port), family=_family(host))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --http HOST:PORT"
            ) from None
        self.port = self.socket.getsockname()[1]
        self.url = url_of(host, self.port)
        self.app = create_app(board, feed, self.stop, token)
        config = uvicorn.Config(
            self.app, http="h11", loop="asyncio", ws="none", lifespan="off", access_log=False, log_config=None,
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)

    def run(self) -> None:
        """Thread body: serve until `stop` is set."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        serving = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.stop.is_set() and not serving.done():
            await asyncio.sleep(STOP_POLL_S)
        self.server.should_exit = True  # streams see the stop event and end by themselves
        while not (await asyncio.wait({serving}, timeout=GRACE_S))[0]:
            stuck = list(getattr(self.server.server_state, "connections", ()))  # clients that stopped reading
            logger.debug("closing %d connection(s) still open after the stop", len(stuck))
            for connection in stuck:
                connection.transport.abort()
        await serving

    def close(self) -> None:
        """Release the socket when the thread never ran (a failed start)."""
        self.socket.close()


class WebView:
    """The web view of a serving run (`distill.realtime.serve._Run`): its event feed, server and thread.

    The run publishes every event to `feed`; `start` serves on a thread of its own worker group (a failure
    there stops the run and is raised by `raise_error`); `close` ends it after the run's other threads, so
    event streams carry everything up to the final stats line.
    """

    def __init__(self, run: Any, address: str | int, token: str | None) -> None:
        host, port = parse_http_address(address)
        self.feed = EventFeed([s.name for s in run.states])
        self.server = WebServer(RunBoard(run), self.feed, host, port, token or None)
        self.url = self.server.url
        self.workers = Workers(run.stop)
        self._started = False
        logger.info("web view on %s%s", self.url, " (token required)" if token else "")

    def start(self) -> None:
        self.workers.start("web", self.server.run)
        self._started = True

    def close(self, timeout_s: float) -> list[str]:
        """Stop the server; returns the names of threads still running after `timeout_s`."""
        self.server.stop.set()
        if not self._started:
            self.server.close()
            return []
        return self.workers.join(timeout_s)

    def raise_error(self) -> None:
        self.workers.raise_first()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
