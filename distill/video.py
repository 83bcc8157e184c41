"""Video sources and frame sampling, on OpenCV.

- `find_videos(inputs)`: files, folders (searched recursively) and globs -> `VideoFile`s with provenance
  (the path relative to the root the user gave); paths that are missing or not videos become `Failure`s.
- `Frame`, `SampleStats`, `thumbnail`/`thumbnail_change` (near-duplicate tests), `resize_short_side`,
  `encode_jpeg`, `probe`, `write_video`: what sampling, labelling and serving share.
- `open_source(spec)`: cameras (`0`), RTSP/HTTP URLs and files, for the real-time loop (OpenCV capture).

This module does not sample video files (`distill.decode` does, decoding only the frames it keeps) and does not
label, store or display frames; `distill.dataset` stores them.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # bad files are reported by us, in one line each
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from distill.errors import VideoError  # noqa: E402

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv", ".3gp"}
)
_GLOB_CHARS = re.compile(r"[*?\[]")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(frozen=True)
class VideoFile:
    """A video on disk and the name it carries in every output (relative to the root the user gave)."""

    path: Path
    name: str


@dataclass(frozen=True)
class Failure:
    """An input that could not be used, and why (shown to the user as one warning line)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Frame:
    """One sampled frame with its provenance. `image` is BGR uint8, (H, W, 3), as OpenCV gives it."""

    video: str
    frame_index: int
    timestamp_s: float
    image: np.ndarray = field(repr=False)


@dataclass
class SampleStats:
    """Counts from sampling (`distill.decode`), updated as frames are produced."""

    videos: int = 0  # videos sampled without error
    frames_read: int = 0  # frames decoded
    frames_kept: int = 0
    duplicates: int = 0  # sampled but skipped as near-duplicates of the last kept frame

    def add(self, other: SampleStats) -> None:
        """Add `other`'s frame counts (videos are counted by whoever knows a whole video is done)."""
        self.frames_read += other.frames_read
        self.frames_kept += other.frames_kept
        self.duplicates += other.duplicates


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frame_count: int  # as the container claims; may be 0 or approximate
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def find_videos(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[VideoFile], list[Failure]]:
    """Expand files, folders (recursive) and globs into videos, in a stable order.

    Folders contribute files with a video extension (others are ignored silently); names are relative to the
    folder. A file given directly is named by its file name. Missing paths, globs that match nothing, folders
    without videos and files that cannot be read become `Failure`s (each logged as one warning), never exceptions.
    """
    videos: dict[Path, VideoFile] = {}
    failures: list[Failure] = []
    for raw in inputs:
        text = os.fspath(raw)
        if _GLOB_CHARS.search(text) and not Path(text).exists():
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                failures.append(Failure(text, "no file matches this pattern"))
            for match in matches:
                if match.is_file():
                    _add_file(videos, failures, match, match.name, explicit=False)
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir())
            if not found:
                failures.append(
                    Failure(text, "folder holds no videos (" + ", ".join(sorted(VIDEO_EXTENSIONS)[:5]) + ", ...)")
                )
            for p in found:
                _add_file(videos, failures, p, p.relative_to(path).as_posix(), explicit=False)
        elif path.is_symlink() and not path.exists():
            failures.append(Failure(text, "broken symbolic link"))
        elif not path.exists():
            failures.append(Failure(text, "no such file or folder"))
        else:
            _add_file(videos, failures, path, path.name, explicit=True)
    for failure in failures:
        logger.warning("skipping %s: %s", failure.name, failure.reason)
    return list(videos.values()), failures


def _add_file(videos: dict[Path, VideoFile], failures: list[Failure], path: Path, name: str, explicit: bool) -> None:
    if not explicit and path.suffix.lower() not in VIDEO_EXTENSIONS:
        return
    key = path.resolve()
    if key in videos:
        return
    if not os.access(path, os.R_OK):
        failures.append(Failure(name, "permission denied; make the file readable"))
    elif path.stat().st_size == 0:
        failures.append(Failure(name, "file is empty (0 bytes)"))
    else:
        videos[key] = VideoFile(path, name)


def _open_file(path: Path) -> cv2.VideoCapture:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise VideoError(f"{path.name}: cannot read ({exc.strerror or exc})") from None
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path.name}: not a readable video (corrupt, truncated, or not a video file)")
    return cap


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's frame rate, frame count and size from its container."""
    cap = _open_file(Path(path))
    try:
        return _info(cap)
    finally:
        cap.release()


def _info(cap: cv2.VideoCapture) -> VideoInfo:
    return VideoInfo(
        fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
        frame_count=max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0),
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
    )


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A 32x32 grey float thumbnail in [0, 1], for near-duplicate tests.

    A cheap bilinear step to 128x128 first (0.05 ms on a 720p frame, against 2 ms for one area resize); the
    area step then averages 16 samples per cell, enough to flatten sensor noise.
    """
    if min(image.shape[:2]) > 128:
        image = cv2.resize(image, (128, 128), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    return grey.astype(np.float32) / 255.0


def thumbnail_change(a: np.ndarray, b: np.ndarray) -> float:
    """The largest change of any thumbnail cell, in [0, 1].

    The largest cell, not the mean: a status lamp that turns red changes a few cells a lot and must count as a
    new scene, while sensor noise averages out inside every cell.
    """
    return float(np.abs(a - b).max())


def _timestamp(cap: cv2.VideoCapture, index: int, fps: float) -> float:
    """Container time of the frame just grabbed; falls back to index / fps where the backend has none."""
    msec = cap.get(cv2.CAP_PROP_POS_MSEC)
    if msec > 0 or index == 0:
        return msec / 1000.0
    return index / fps if fps > 0 else 0.0


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is `size` pixels (never upscales; `size=0` returns the image unchanged)."""
    h, w = image.shape[:2]
    short = min(h, w)
    if size <= 0 or short <= size:
        return image
    scale = size / short
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VideoError("JPEG encoding failed")
    return buf.tobytes()


def write_video(path: str | os.PathLike[str], frames: Iterable[np.ndarray], fps: float = 25.0) -> Path:
    """Write BGR frames to an MP4 (mpeg4) file; used by the demo, tests and benchmarks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for image in frames:
            if writer is None:
                h, w = image.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise VideoError(f"cannot write video {path}; is the folder writable?")
            writer.write(image)
    finally:
        if writer is not None:
            writer.release()
    return path


# --- live sources -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A stream for the real-time loop: a camera index, a URL, or a file."""

    spec: str
    kind: str  # camera | url | file

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def display_name(self) -> str:
        """The name for logs and events: credentials in URLs are masked."""
        return mask_url(self.spec) if self.kind == "url" else self.spec


def parse_source(spec: str | int) -> Source:
    """Classify a source spec: `0` -> camera 0, `rtsp://...` -> URL, anything else -> file."""
    text = str(spec).strip()
    if text.isdigit():
        return Source(text, "camera")
    if _URL.match(text):
        return Source(text, "url")
    return Source(text, "file")


def mask_url(url: str) -> str:
    """Hide credentials: `rtsp://user:pw@host/x` -> `rtsp://***@host/x`."""
    return re.sub(r"(^[a-z][a-z0-9+.-]*://)[^/@]+@", r"\1***@", url, flags=re.IGNORECASE)


def open_source(source: Source | str | int) -> cv2.VideoCapture:
    """Open a camera, URL or file with OpenCV; raises `VideoError` (credentials masked) when it cannot."""
    if not isinstance(source, Source):
        source = parse_source(source)
    if source.kind == "file":
        return _open_file(Path(source.spec))
    if source.kind == "camera":
        cap = cv2.VideoCapture(int(source.spec))
    else:
        cap = cv2.VideoCapture(source.spec, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"cannot open {source.kind} {source.display_name}; check that it exists and is reachable")
    return cap
