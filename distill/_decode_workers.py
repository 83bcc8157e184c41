"""Decode workers: videos -> (video, chunk) work items -> JPEG-encoded, pre-shrunk frames on a bounded queue.

```
  calling process (teacher, writer)                    N decode workers (processes; one thread when N == 1)
  ---------------------------------                    -----------------------------------------------------
  DecodePool.events() <-- results (bounded) <------ plan:   video -> timeline -> chunks (plans go first)
        | tasks: plans, then every unfinished chunk --> sample: chunk -> frames -> JPEG bytes (stored size,
                                                                and the teacher's size where it differs)
```
A worker that fails on a file reports it once (`Failure`) and takes the next task; one that dies outright is
replaced and its file reported. Workers ignore Ctrl-C (the caller stops them, within about a second through
`close`), and exit by themselves when the calling process goes away, so none is left behind.

This module does not choose frames (`distill.decode` does), label or store them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass

from distill.config import SamplingConfig
from distill.decode import Chunk, media_end, plan_chunks, read_timeline, sample_chunk
from distill.errors import VideoError, first_line
from distill.video import Failure, SampleStats, VideoFile, encode_jpeg, resize_short_side

logger = logging.getLogger(__name__)

_POLL_S = 0.2  # how often a blocked worker or the caller looks at the stop flag and the other side's health
_RESULTS = 32  # frames in flight between the workers and the caller (about 1 MB of JPEGs at 320 px)


@dataclass(frozen=True)
class EncodedFrame:
    """A kept frame as it travels between processes.

    Attributes:
        jpeg: the stored image (short side `sampling.image_size`, JPEG quality 90).
        teacher_jpeg: the teacher's view where it differs from the stored one (JPEG quality 95), else None.
    """

    video: str
    frame_index: int
    timestamp_s: float
    chunk: int
    jpeg: bytes
    teacher_jpeg: bytes | None = None


@dataclass(frozen=True)
class ChunkDone:
    """Every frame of a chunk has been handed over (those before it in `events()`)."""

    video: str
    number: int
    seconds: float  # media time the chunk covers
    decode_s: float  # worker time spent decoding, converting, deduplicating and encoding
    stats: SampleStats
    skipped: int = 0  # kept frames not handed over (stored by an earlier run)


@dataclass(frozen=True)
class VideoDone:
    """Every chunk of the video is done (or was done by an earlier run); `seconds` of media time not yet counted."""

    video: str
    seconds: float


Event = EncodedFrame | ChunkDone | VideoDone | Failure


def default_workers() -> int:
    """Cores minus one (the teacher's), at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM stops the calling process the way Ctrl-C does (`KeyboardInterrupt`), so that
    `finally` blocks run: workers are stopped and finished rows stored. Only in the main thread (elsewhere, a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _put(results, item: object, stop) -> bool:
    while not stop.is_set():
        try:
            results.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def encode_frame(image, sampling: SamplingConfig, teacher_size: int | None) -> tuple[bytes, bytes | None]:
    """(the JPEG a label set stores, the JPEG the teacher sees or None when it sees the stored one) of a BGR frame."""
    stored = resize_short_side(image, sampling.image_size)
    if teacher_size is None:
        return encode_jpeg(stored), None
    view = resize_short_side(image, teacher_size)
    return encode_jpeg(stored), (None if view.shape == stored.shape else encode_jpeg(view, 95))


def _sample(task: tuple, sampling: SamplingConfig, results, stop, worker: int) -> None:
    chunk, skip, teacher_size = task
    start = time.perf_counter()
    stats = SampleStats()
    busy = 0.0  # time blocked on a full queue is the caller's, not decoding's
    skipped = 0
    for frame in sample_chunk(chunk, sampling, stats):
        if frame.frame_index in skip:  # decoded all the same: dedup must see it
            skipped += 1
            continue
        jpeg, view = encode_frame(frame.image, sampling, teacher_size)
        item = EncodedFrame(frame.video, frame.frame_index, frame.timestamp_s, chunk.number, jpeg, view)
        t = time.perf_counter()
        if not _put(results, ("frame", worker, item), stop):
            return
        busy += time.perf_counter() - t
    seconds = chunk.end_s - chunk.start_s
    done = ChunkDone(chunk.video.name, chunk.number, seconds, time.perf_counter() - start - busy, stats, skipped)
    _put(results, ("chunk", worker, done), stop)


def _serve(tasks, results, stop, sampling: SamplingConfig, worker: int) -> None:
    """A worker's loop: take tasks until None; report a file's failure as one line and go on."""
    import av

    parent = os.getppid()
    while not stop.is_set():
        try:
            task = tasks.get(timeout=_POLL_S)
        except queue.Empty:
            if worker >= 0 and os.getppid() != parent:  # the calling process is gone
                return
            continue
        if task is None:
            return
        kind, item = task
        video = item if kind == "plan" else item[0].video
        _put(results, ("started", worker, video.name), stop)
        try:
            if kind == "plan":
                _put(results, ("planned", worker, video, *plan_video(video, sampling)), stop)
            else:
                _sample(item, sampling, results, stop, worker)
        except VideoError as exc:
            _put(results, ("failed", worker, video.name, str(exc).removeprefix(f"{video.path.name}: ")), stop)
        except (OSError, av.FFmpegError) as exc:  # a decoder error on this file: one line, this file only
            _put(results, ("failed", worker, video.name, first_line(exc)), stop)
        except Exception as exc:  # a bug, or out of memory: the run stops and says why
            _put(results, ("error", worker, _portable(exc)), stop)
            return


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (to cross to the calling process), else a RuntimeError with its first line."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"decode worker: {first_line(exc)}")


def plan_video(video: VideoFile, sampling: SamplingConfig) -> tuple[list[Chunk], float, str | None]:
    """(the video's chunks of work, its sampled duration in seconds, a note about a damaged container or None)."""
    timeline = read_timeline(video.path)
    note = None
    if sampling.end_s is None and timeline.claimed_frames > 10 and len(timeline) < 0.9 * timeline.claimed_frames:
        note = f"{video.name}: {len(timeline)} of the {timeline.claimed_frames} frames it claims (truncated file?)"
    return plan_chunks(video, sampling, timeline), media_end(timeline, sampling), note


def _worker_main(tasks, results, stop, sampling: SamplingConfig, worker: int) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the caller stops us
    with contextlib.suppress(Exception):  # Linux: die with the calling process, even if it is killed
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        _serve(tasks, results, stop, sampling, worker)


class DecodePool:
    """Decode workers over a list of videos; iterate `events()` once, then (or on any error) `close()`.

    Args:
        videos: in the order their plans are made (chunks are then handed out in plan order).
        sampling: which frames, and how many workers (`sampling.workers`, None: `default_workers()`).
        teacher_size: the short side the teacher shrinks to (see `EncodedFrame.teacher_jpeg`); None: the
            stored image is all the teacher sees. It may be set after `start()`, until `events()` begins: the
            workers only plan until then (so they can start while a teacher loads).
        finished_chunks: video name -> chunk numbers an earlier run finished (not decoded again).
        done_frames: video name -> frame indices already stored (decoded for dedup, not handed over).

    Example:
        >>> with DecodePool(videos, SamplingConfig(fps=1)) as pool:  # doctest: +SKIP
        ...     pool.start()  # optional: spawn the workers and plan the videos now
        ...     for event in pool.events(): ...
    """

    def __init__(
        self,
        videos: Sequence[VideoFile],
        sampling: SamplingConfig,
        *,
        teacher_size: int | None = None,
        finished_chunks: Mapping[str, Set[int]] | None = None,
        done_frames: Mapping[str, Set[int]] | None = None,
    ) -> None:
        self.videos, self.sampling, self.teacher_size = list(videos), sampling, teacher_size
        self.finished_chunks = finished_chunks or {}
        self.done_frames = done_frames or {}
        self.workers = sampling.workers or default_workers()
        if self.workers == 1:  # no process to start: one thread beside the teacher
            self._tasks, self._results, self._stop = queue.Queue(), queue.Queue(_RESULTS), threading.Event()
        else:
            self._ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or torch threads
            self._tasks, self._results, self._stop = self._ctx.Queue(), self._ctx.Queue(_RESULTS), self._ctx.Event()
        self._procs: dict[int, object] = {}
        self._started = False
        self._current: dict[int, str] = {}  # worker -> the video it is on
        self._next_id = 0

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers and hand them the videos to plan (`events()` does it if not done yet)."""
        if self._started:
            return
        self._started = True
        args = (self._tasks, self._results, self._stop, self.sampling)
        for video in self.videos:
            self._tasks.put(("plan", video))
        if self.workers == 1:
            thread = threading.Thread(target=_serve, args=(*args, -1), name="distill-decode", daemon=True)
            thread.start()
            self._procs[-1] = thread
            return
        for _ in range(self.workers):
            self._spawn(args)

    def _spawn(self, args: tuple) -> None:
        worker, self._next_id = self._next_id, self._next_id + 1
        proc = self._ctx.Process(target=_worker_main, args=(*args, worker), name=f"distill-decode-{worker}")
        proc.daemon = True
        proc.start()
        self._procs[worker] = proc

    def events(self, stop: threading.Event | None = None) -> Iterator[Event]:
        """Frames, finished chunks, finished videos and failed videos, as they happen (frames of a chunk come
        before its `ChunkDone`; a failed video is named once and gets no `VideoDone`). Ends early, within
        a fraction of a second, once `stop` is set."""
        self.start()
        state = _Progress(outstanding=len(self.videos))
        while state.outstanding > 0:
            try:
                message = self._results.get(timeout=_POLL_S)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return
                yield from self._check_workers(state)
                continue
            yield from self._handle(message, state)
        for _ in self._procs:
            self._tasks.put(None)

    def _handle(self, message: tuple, state: _Progress) -> Iterator[Event]:
        kind, worker, *rest = message
        if kind == "started":
            self._current[worker] = rest[0]
            return
        if kind == "frame":
            yield rest[0]
            return
        self._current.pop(worker, None)
        if kind == "error":
            raise rest[0]
        state.outstanding -= 1
        if kind == "planned":
            yield from self._planned(state, *rest)
        elif kind == "chunk":
            yield rest[0]
            yield from state.chunk_finished(rest[0].video, rest[0].seconds)
        else:
            yield from state.fail(*rest)

    def _planned(
        self, state: _Progress, video: VideoFile, chunks: list[Chunk], duration: float, note: str | None
    ) -> Iterator[Event]:
        if note:
            logger.warning("%s", note)
        finished = self.finished_chunks.get(video.name, set())
        todo = [c for c in chunks if c.number not in finished]
        done = self.done_frames.get(video.name, set())
        for chunk in todo:
            skip = frozenset(i for i, _, _ in chunk.frames if i in done)
            self._tasks.put(("chunk", (chunk, skip, self.teacher_size)))
        state.outstanding += len(todo)
        yield from state.planned(video.name, len(todo), duration)

    def _check_workers(self, state: _Progress) -> Iterator[Event]:
        """A worker that died (a decoder crash) is replaced, and the file it was on reported."""
        for worker, proc in list(self._procs.items()):
            if proc.is_alive() or worker < 0:
                continue
            del self._procs[worker]
            name = self._current.pop(worker, None)
            logger.debug("decode worker %d exited with %s", worker, getattr(proc, "exitcode", None))
            self._spawn((self._tasks, self._results, self._stop, self.sampling))
            if name is not None:
                state.outstanding -= 1
                yield from state.fail(name, f"the decoder crashed (exit code {proc.exitcode})")
        if -1 in self._procs and not self._procs[-1].is_alive():
            raise VideoError("the decode thread stopped unexpectedly; rerun with --debug to see why")

    def close(self) -> None:
        """Stop every worker: within about a second when idle or blocked, by force after two."""
        self._stop.set()
        deadline = time.monotonic() + 2.0
        for proc in self._procs.values():
            while proc.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty, OSError, ValueError):
                    self._results.get(timeout=0.05)  # unblock a worker writing into a full pipe
                proc.join(timeout=0.05)
        for proc in self._procs.values():
            if isinstance(proc, threading.Thread):
                continue
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=1)
        for q in (self._tasks, self._results):
            if hasattr(q, "cancel_join_thread"):
                q.cancel_join_thread()
                q.close()
        self._procs.clear()


@dataclass
class _Progress:
    """Which videos are still open, and how much media time each has had counted."""

    outstanding: int
    chunks_left: dict | None = None
    counted: dict | None = None
    durations: dict | None = None
    failed: set | None = None

    def __post_init__(self) -> None:
        self.chunks_left, self.counted, self.durations, self.failed = {}, {}, {}, set()

    def planned(self, video: str, chunks: int, duration: float) -> Iterator[Event]:
        self.chunks_left[video], self.counted[video], self.durations[video] = chunks, 0.0, duration
        if chunks == 0:
            yield from self._video_done(video)

    def chunk_finished(self, video: str, seconds: float) -> Iterator[Event]:
        self.chunks_left[video] -= 1
        self.counted[video] += seconds
        if self.chunks_left[video] == 0 and video not in self.failed:
            yield from self._video_done(video)

    def _video_done(self, video: str) -> Iterator[Event]:
        yield VideoDone(video, max(self.durations[video] - self.counted[video], 0.0))

    def fail(self, video: str, reason: str) -> Iterator[Event]:
        if video not in self.failed:
            self.failed.add(video)
            logger.warning("skipping %s: %s", video, reason)
            yield Failure(video, reason)
