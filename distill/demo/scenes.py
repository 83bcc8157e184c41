"""Rendered videos of a machine with a status lamp, and their ground truth, for the demo and the tests.

Each video shows one machine seen by a fixed (slightly shaky) camera, going through four
operational states over time:

- **active**: green lamp, spinning wheel, moving conveyor, green bars on the screen;
- **idle**: amber lamp, everything still, dim blue screen;
- **error**: red lamp blinking (twice a second), warning triangle on the screen, everything still;
- **offline**: lamp and screen dark.

Every video gets its own camera placement, machine colour and wall colour; every frame gets lighting drift
(slow gain and colour-temperature changes), sensor noise and camera jitter, so a classifier has to learn the
lamp and the screen rather than pixel values. Segment boundaries lie half-way between frames, so a frame's state
never depends on how a decoder rounds its timestamp. Everything is deterministic for a given seed.

Example:
    >>> scenario = render_scenario("runs/demo/videos", SceneSpec(n_videos=4, seconds=30))  # doctest: +SKIP
    >>> scenario.truth_csv  # doctest: +SKIP
    PosixPath('runs/demo/videos/segments.csv')

This module does not label, train or evaluate anything; it only makes videos and writes what they show.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from distill.errors import ConfigError
from distill.video import write_video

STATES = ("active", "idle", "error", "offline")
SEGMENT_COLUMNS = ("video", "start_s", "end_s", "label")

_LAMP_BGR = {"active": (60, 220, 40), "idle": (20, 170, 250), "error": (40, 40, 245)}  # lit colours
_LAMP_OFF = (45, 45, 50)
_LAMP_AT, _LAMP_RADIUS = (0.675, 0.16), 0.055  # scene coordinates; the radius is a share of the short side


@dataclass(frozen=True)
class Segment:
    """A stretch of one video in one state: `start_s <= t < end_s`."""

    video: str
    start_s: float
    end_s: float
    label: str


@dataclass(frozen=True)
class SceneSpec:
    """What to render: how many videos, how long, and how hard (noise, jitter, drift)."""

    n_videos: int = 6
    seconds: float = 60.0
    fps: float = 10.0
    width: int = 320
    height: int = 240
    min_segment_s: float = 4.0
    max_segment_s: float = 12.0
    noise: float = 7.0  # std of Gaussian sensor noise, in 8-bit levels
    jitter_px: float = 2.5  # camera shake amplitude
    drift: float = 0.2  # amplitude of the slow lighting gain change (0.2: 80%..120%)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_videos < 1:
            raise ConfigError(f"n_videos must be >= 1 (got {self.n_videos})")
        if self.fps <= 0 or self.seconds <= 0:
            raise ConfigError("fps and seconds must be > 0")
        if not 0 < self.min_segment_s <= self.max_segment_s:
            raise ConfigError("need 0 < min_segment_s <= max_segment_s")
        if self.seconds < len(STATES) * self.min_segment_s:
            raise ConfigError(
                f"seconds ({self.seconds}) is too short to show all {len(STATES)} states; "
                f"use at least {len(STATES) * self.min_segment_s:g}"
            )
        if self.width < 160 or self.height < 120:
            raise ConfigError("width x height must be at least 160x120")


@dataclass(frozen=True)
class Scenario:
    """Rendered videos (relative names in `segments` match the file names in `video_dir`) and ground truth."""

    video_dir: Path
    videos: tuple[Path, ...]
    segments: tuple[Segment, ...]
    truth_csv: Path


# --- planning -----------------------------------------------------------------------------------------------


def plan_segments(video: str, spec: SceneSpec, rng: np.random.Generator) -> list[Segment]:
    """Random state segments covering `[0, spec.seconds)`; every state appears, no state follows itself.

    The first segments show every state once (shortened to fit if the video is short); boundaries are placed
    half-way between frame times (`(k + 0.5) / fps`).
    """
    n_frames = int(round(spec.seconds * spec.fps))
    labels = [str(s) for s in rng.permutation(STATES)]
    lengths = list(rng.uniform(spec.min_segment_s, spec.max_segment_s, len(labels)) * spec.fps)
    if sum(lengths) > n_frames:
        lengths = [x * n_frames / sum(lengths) for x in lengths]
    while sum(lengths) < n_frames:
        labels.append(str(rng.choice([s for s in STATES if s != labels[-1]])))
        lengths.append(rng.uniform(spec.min_segment_s, spec.max_segment_s) * spec.fps)
    bounds = np.minimum(np.round(np.cumsum(lengths)).astype(int), n_frames)
    if len(labels) > len(STATES) and n_frames - bounds[-2] < spec.min_segment_s * spec.fps / 2:
        labels.pop()  # a very short last segment is merged into the one before
        bounds = bounds[:-1]
    bounds[-1] = n_frames
    edges = [0.0] + [(b - 0.5) / spec.fps for b in bounds[:-1]] + [n_frames / spec.fps]
    return [
        Segment(video, round(float(edges[i]), 4), round(float(edges[i + 1]), 4), labels[i]) for i in range(len(labels))
    ]


def state_at(segments: Sequence[Segment], t: float) -> str:
    """The state shown at time `t` (the last segment's state past the end)."""
    for seg in segments:
        if seg.start_s <= t < seg.end_s:
            return seg.label
    return segments[-1].label


def write_segments_csv(path: str | os.PathLike[str], segments: Sequence[Segment]) -> Path:
    """Write ground truth as `video,start_s,end_s,label` (the format `--annotations` and `--truth` read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(SEGMENT_COLUMNS)
        for s in segments:
            writer.writerow([s.video, f"{s.start_s:.4f}", f"{s.end_s:.4f}", s.label])
    return path


# --- drawing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    """Per-video appearance: camera placement, colours, lighting drift phase."""

    dx: float
    dy: float
    scale: float
    wall: tuple[int, int, int]
    body: tuple[int, int, int]
    drift_period_s: float
    drift_phase: float
    tint_phase: float


def _random_look(rng: np.random.Generator) -> _Look:
    # factory colours: greys and beiges with a slight tint, so colour means lamp or screen, not machine
    wall = tuple(int(v) for v in np.clip(rng.integers(90, 170) + rng.integers(-14, 15, 3), 0, 255))
    body = tuple(int(v) for v in np.clip(rng.integers(100, 160) + rng.integers(-10, 11, 3), 0, 255))
    return _Look(
        dx=float(rng.uniform(-0.08, 0.08)),
        dy=float(rng.uniform(-0.06, 0.06)),
        scale=float(rng.uniform(0.85, 1.1)),
        wall=wall,  # type: ignore[arg-type]
        body=body,  # type: ignore[arg-type]
        drift_period_s=float(rng.uniform(15, 40)),
        drift_phase=float(rng.uniform(0, 2 * math.pi)),
        tint_phase=float(rng.uniform(0, 2 * math.pi)),
    )


class _Canvas:
    """Maps scene coordinates (0..1 of the frame, centred machine) to pixels for one video's camera."""

    def __init__(self, spec: SceneSpec, look: _Look) -> None:
        self.w, self.h, self.look = spec.width, spec.height, look
        self._glows: dict[str, np.ndarray] = {}

    def pt(self, x: float, y: float) -> tuple[int, int]:
        s, lk = self.look.scale, self.look
        return (
            int(round((0.5 + (x - 0.5) * s + lk.dx) * self.w)),
            int(round((0.55 + (y - 0.55) * s + lk.dy) * self.h)),
        )

    def px(self, size: float) -> int:
        return max(1, int(round(size * self.look.scale * min(self.w, self.h))))

    def glow(self, state: str) -> np.ndarray:
        """The halo of the lit lamp (computed once per colour)."""
        if state not in self._glows:
            glow = np.zeros((self.h, self.w, 3), np.uint8)
            radius = self.px(_LAMP_RADIUS)
            cv2.circle(glow, self.pt(*_LAMP_AT), radius * 2, _LAMP_BGR[state], -1, cv2.LINE_AA)
            self._glows[state] = (cv2.GaussianBlur(glow, (0, 0), radius * 0.8) * 0.6).astype(np.uint8)
        return self._glows[state]


def _background(spec: SceneSpec, look: _Look) -> np.ndarray:
    """Wall with a vertical light gradient, and a darker floor."""
    h, w = spec.height, spec.width
    ramp = np.linspace(1.1, 0.8, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(np.array(look.wall, np.float32) * ramp, (h, w, 3)).copy()
    floor = int(h * (0.8 + look.dy))
    img[floor:] = np.array(look.wall, np.float32) * 0.45
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_machine(img: np.ndarray, cv: _Canvas, state: str, t: float, phase: float) -> None:
    """Body, lamp tower, screen, wheel and conveyor for one frame. `phase` is the moving parts' position."""
    body = cv.look.body
    dark = tuple(int(c * 0.6) for c in body)
    cv2.rectangle(img, cv.pt(0.22, 0.32), cv.pt(0.78, 0.78), body, -1)
    cv2.rectangle(img, cv.pt(0.22, 0.32), cv.pt(0.78, 0.78), dark, 2)
    # lamp tower on the top right
    cv2.rectangle(img, cv.pt(0.665, 0.2), cv.pt(0.685, 0.32), dark, -1)
    lamp_on = state in _LAMP_BGR and not (state == "error" and (t * 2.0) % 1.0 >= 0.5)
    centre, radius = cv.pt(*_LAMP_AT), cv.px(_LAMP_RADIUS)
    if lamp_on:
        cv2.add(img, cv.glow(state), dst=img)
        cv2.circle(img, centre, radius, _LAMP_BGR[state], -1, cv2.LINE_AA)
        cv2.circle(img, centre, max(1, radius // 3), (235, 245, 250), -1, cv2.LINE_AA)
    else:
        cv2.circle(img, centre, radius, _LAMP_OFF, -1, cv2.LINE_AA)
    cv2.circle(img, centre, radius, (30, 30, 30), 1, cv2.LINE_AA)
    _draw_screen(img, cv, state, phase)
    _draw_wheel(img, cv, phase, dark)
    _draw_conveyor(img, cv, phase)


def _draw_screen(img: np.ndarray, cv: _Canvas, state: str, phase: float) -> None:
    top_left, bottom_right = cv.pt(0.27, 0.37), cv.pt(0.52, 0.58)
    bg = {"active": (30, 50, 25), "idle": (90, 60, 40), "error": (30, 30, 110), "offline": (12, 12, 12)}[state]
    cv2.rectangle(img, top_left, bottom_right, bg, -1)
    cv2.rectangle(img, top_left, bottom_right, (20, 20, 20), 2)
    (x0, y0), (x1, y1) = top_left, bottom_right
    if state == "active":
        for i in range(4):
            level = 0.35 + 0.3 * (1 + math.sin(phase * 0.7 + i * 1.3))
            bx = x0 + 4 + i * (x1 - x0 - 8) // 4
            cv2.rectangle(
                img, (bx, int(y1 - 3 - level * (y1 - y0 - 6) * 0.9)), (bx + (x1 - x0) // 7, y1 - 3), (70, 230, 90), -1
            )
    elif state == "idle":
        cv2.line(img, (x0 + 5, (y0 + y1) // 2), (x1 - 5, (y0 + y1) // 2), (200, 170, 140), 2)
    elif state == "error":
        pts = np.array([((x0 + x1) // 2, y0 + 3), (x0 + 6, y1 - 3), (x1 - 6, y1 - 3)], np.int32)
        cv2.fillPoly(img, [pts], (20, 220, 250), cv2.LINE_AA)
        cv2.line(img, ((x0 + x1) // 2, y0 + 9), ((x0 + x1) // 2, y1 - 9), (20, 20, 20), 2)


def _draw_wheel(img: np.ndarray, cv: _Canvas, phase: float, dark: tuple[int, ...]) -> None:
    centre, radius = cv.pt(0.65, 0.52), cv.px(0.09)
    cv2.circle(img, centre, radius, (70, 70, 75), -1, cv2.LINE_AA)
    for k in range(3):
        a = phase + k * 2 * math.pi / 3
        end = (int(centre[0] + radius * math.cos(a)), int(centre[1] + radius * math.sin(a)))
        cv2.line(img, centre, end, (190, 190, 195), 2, cv2.LINE_AA)
    cv2.circle(img, centre, radius, dark, 2, cv2.LINE_AA)


def _draw_conveyor(img: np.ndarray, cv: _Canvas, phase: float) -> None:
    (x0, y0), (x1, y1) = cv.pt(0.12, 0.8), cv.pt(0.88, 0.86)
    cv2.rectangle(img, (x0, y0), (x1, y1), (50, 50, 50), -1)
    step = max(6, (x1 - x0) // 12)
    offset = int(phase * step / math.pi) % step
    for x in range(x0 + offset, x1, step):
        cv2.line(img, (x, y0 + 1), (x, y1 - 1), (120, 120, 120), 1)


def _draw_worker(img: np.ndarray, cv: _Canvas, x: float, colour: tuple[int, int, int]) -> None:
    """A person walking past in front of the machine (head and shoulders cover part of it)."""
    cv2.circle(img, cv.pt(x, 0.5), cv.px(0.045), (90, 110, 150), -1, cv2.LINE_AA)
    cv2.rectangle(img, cv.pt(x - 0.06, 0.56), cv.pt(x + 0.06, 1.2), colour, -1)


def _worker_passes(spec: SceneSpec, rng: np.random.Generator) -> list[tuple[float, float, int, tuple[int, int, int]]]:
    """(start_s, duration_s, direction, clothes colour) of people walking past, about one per 20 s."""
    n = int(rng.poisson(spec.seconds / 20))
    return [
        (
            float(rng.uniform(0, spec.seconds)),
            float(rng.uniform(3, 6)),
            int(rng.choice([-1, 1])),
            tuple(int(c) for c in rng.integers(20, 120, 3)),
        )  # type: ignore[misc]
        for _ in range(n)
    ]


def _camera(
    img: np.ndarray, spec: SceneSpec, look: _Look, t: float, shake: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """Lighting drift, camera jitter and sensor noise applied to a clean frame."""
    gain = 1.0 + spec.drift * math.sin(2 * math.pi * t / look.drift_period_s + look.drift_phase)
    tint = 0.06 * math.sin(2 * math.pi * t / (look.drift_period_s * 1.7) + look.tint_phase)
    scale = np.array([gain * (1 + tint), gain, gain * (1 - tint)], np.float32)  # B, G, R
    dx, dy, rot = shake
    m = cv2.getRotationMatrix2D((spec.width / 2, spec.height / 2), float(rot), 1.0)
    m[:, 2] += (dx, dy)
    img = cv2.warpAffine(img, m, (spec.width, spec.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = img.astype(np.float32) * scale + noise
    return np.clip(out, 0, 255).astype(np.uint8)


def render_frames(segments: Sequence[Segment], spec: SceneSpec, seed: int) -> Iterator[np.ndarray]:
    """BGR frames of one video showing `segments` (its look and jitter come from `seed`)."""
    rng = np.random.default_rng(seed)
    look = _random_look(rng)
    cv = _Canvas(spec, look)
    background = _background(spec, look)
    noise_bank = rng.normal(0, spec.noise, (8, spec.height, spec.width, 3)).astype(np.float32)
    shake = np.zeros(3)
    phase = float(rng.uniform(0, 2 * math.pi))
    walkers = _worker_passes(spec, rng)
    for i in range(int(round(spec.seconds * spec.fps))):
        t = i / spec.fps
        state = state_at(segments, t)
        if state == "active":
            phase += 2.2 / spec.fps * 2 * math.pi / 2  # about 1.1 turns per second
        target = rng.normal(0, 1, 3) * (spec.jitter_px, spec.jitter_px, spec.jitter_px * 0.3)
        shake = 0.6 * shake + 0.4 * target  # smooth shake, not white noise
        img = background.copy()
        _draw_machine(img, cv, state, t, phase)
        for start, duration, direction, colour in walkers:
            if start <= t < start + duration:
                progress = (t - start) / duration
                _draw_worker(img, cv, -0.1 + 1.2 * (progress if direction > 0 else 1 - progress), colour)
        noise = np.roll(noise_bank[i % len(noise_bank)], int(rng.integers(0, spec.width)), axis=1)
        yield _camera(img, spec, look, t, shake, noise)


def render_scenario(out_dir: str | os.PathLike[str], spec: SceneSpec | None = None) -> Scenario:
    """Render `spec.n_videos` videos `machine-XX.mp4` into `out_dir`, and their ground truth `segments.csv`.

    Args:
        out_dir: folder for the videos and `segments.csv` (created if needed; files there are overwritten).
        spec: what to render; defaults to `SceneSpec()` (six one-minute videos at 10 fps, 320x240).

    Returns:
        The video paths, every segment, and the path of the ground-truth CSV.
    """
    spec = spec or SceneSpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.n_videos)
    videos: list[Path] = []
    segments: list[Segment] = []
    for k, seq in enumerate(seeds):
        name = f"machine-{k:02d}.mp4"
        rng = np.random.default_rng(seq)
        segs = plan_segments(name, spec, rng)
        videos.append(write_video(out_dir / name, render_frames(segs, spec, int(rng.integers(2**31))), spec.fps))
        segments.extend(segs)
    truth = write_segments_csv(out_dir / "segments.csv", segments)
    return Scenario(out_dir, tuple(videos), tuple(segments), truth)
