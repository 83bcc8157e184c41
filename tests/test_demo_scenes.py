"""The demo's scene renderer: segments, determinism, what each state looks like, the ground-truth CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from distill.decode import sample_frames
from distill.demo.scenes import STATES, SceneSpec, plan_segments, render_frames, render_scenario, state_at
from distill.errors import ConfigError
from distill.video import probe


@pytest.mark.parametrize("seed", range(6))
def test_segments_cover_the_video_show_every_state_and_fall_between_frames(seed: int):
    spec = SceneSpec(seconds=30, fps=10, min_segment_s=3, max_segment_s=9)
    segs = plan_segments("v.mp4", spec, np.random.default_rng(seed))
    assert segs[0].start_s == 0 and segs[-1].end_s == pytest.approx(30)
    assert all(a.end_s == b.start_s for a, b in zip(segs, segs[1:]))
    assert set(s.label for s in segs) == set(STATES)
    assert all(a.label != b.label for a, b in zip(segs, segs[1:]))
    for s in segs[1:]:
        assert s.start_s * spec.fps % 1 == pytest.approx(0.5)  # half-way between two frames


def test_short_video_still_shows_every_state():
    spec = SceneSpec(seconds=16, fps=10, min_segment_s=4, max_segment_s=12)
    for seed in range(5):
        segs = plan_segments("v", spec, np.random.default_rng(seed))
        assert {s.label for s in segs} == set(STATES)
        assert min(s.end_s - s.start_s for s in segs) >= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"n_videos": 0}, {"fps": 0}, {"seconds": 10, "min_segment_s": 4}, {"min_segment_s": 5, "max_segment_s": 4},
     {"width": 64, "height": 48}],
)  # fmt: skip
def test_bad_specs_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        SceneSpec(**kwargs)


def _hsv_share(image: np.ndarray, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> float:
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    return float(cv2.inRange(hsv, np.array(lo), np.array(hi)).mean() / 255)


GREEN = ((45, 120, 150), (80, 255, 255))  # lit green lamp and screen bars
AMBER = ((12, 150, 180), (24, 255, 255))  # lit amber lamp
RED = ((0, 150, 150), (6, 255, 255))  # lit red lamp and the error screen
YELLOW = ((25, 150, 150), (35, 255, 255))  # warning triangle


def test_each_state_has_its_own_look_and_frames_are_noisy():
    spec = SceneSpec(n_videos=1, seconds=16, fps=10, min_segment_s=4, max_segment_s=4)
    segs = plan_segments("v", spec, np.random.default_rng(1))
    frames = list(render_frames(segs, spec, seed=3))
    assert len(frames) == 160 and frames[0].shape == (240, 320, 3) and frames[0].dtype == np.uint8
    by_state: dict[str, list[np.ndarray]] = {}
    for i, img in enumerate(frames):
        by_state.setdefault(state_at(segs, i / spec.fps), []).append(img)
    share = {s: {c: np.mean([_hsv_share(f, *rng) for f in by_state[s]]) for c, rng in
                 {"green": GREEN, "amber": AMBER, "red": RED, "yellow": YELLOW}.items()} for s in STATES}  # fmt: skip
    assert share["active"]["green"] > 10 * max(share[s]["green"] for s in ("idle", "error", "offline"))
    lamp = {s: np.mean([_hsv_share(f[: f.shape[0] * 3 // 10], *AMBER) for f in by_state[s]]) for s in STATES}
    assert lamp["idle"] > 10 * max(lamp[s] for s in ("active", "error", "offline"))  # amber lamp (top of frame)
    assert share["error"]["yellow"] > 10 * max(share[s]["yellow"] for s in ("active", "idle", "offline"))
    assert max(share["offline"].values()) < 0.002  # nothing lit
    # sensor noise and jitter: two consecutive frames of a still state are never identical
    a, b = by_state["offline"][5], by_state["offline"][6]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2


def test_error_lamp_blinks():
    spec = SceneSpec(n_videos=1, seconds=16, fps=10)
    segs = [type(s)("v", 0.0, 16.0, "error") for s in plan_segments("v", spec, np.random.default_rng(0))[:1]]
    frames = list(render_frames(segs, spec, seed=0))
    red = np.array([_hsv_share(f, *RED) for f in frames[:20]])
    on = np.array([(i / spec.fps * 2) % 1 < 0.5 for i in range(20)])
    assert red[on].min() > red[~on].max()


def test_render_scenario_is_deterministic_and_writes_decodable_videos_and_truth(tmp_path: Path):
    spec = SceneSpec(n_videos=2, seconds=12, fps=8, min_segment_s=2, max_segment_s=4, seed=7)
    scenario = render_scenario(tmp_path / "a", spec)
    again = render_scenario(tmp_path / "b", spec)
    other = render_scenario(tmp_path / "c", SceneSpec(**{**spec.__dict__, "seed": 8}))
    assert scenario.segments == again.segments != other.segments
    assert (tmp_path / "a/segments.csv").read_text() == (tmp_path / "b/segments.csv").read_text()
    assert [p.name for p in scenario.videos] == ["machine-00.mp4", "machine-01.mp4"]
    info = probe(scenario.videos[0])
    assert (info.width, info.height, info.frame_count) == (320, 240, 96)
    with open(scenario.truth_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["video", "start_s", "end_s", "label"]
    assert {r["video"] for r in rows} == {"machine-00.mp4", "machine-01.mp4"}
    assert len(rows) == len(scenario.segments)
    # the frames in the file show what the CSV says: green where active, none where offline
    for frame in sample_frames(scenario.videos[0], fps=2):
        state = state_at([s for s in scenario.segments if s.video == "machine-00.mp4"], frame.timestamp_s)
        green = _hsv_share(frame.image, *GREEN)
        assert (green > 0.003) == (state == "active"), (frame.timestamp_s, state, green)
