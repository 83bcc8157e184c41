"""Shared fixtures: tiny videos generated on the fly (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from distill.video import write_video


def solid_frames(
    colors: list[tuple[int, int, int]],
    seconds_each: float,
    fps: float = 25.0,
    size=(96, 128),
    noise: int = 0,
    seed: int = 0,
):
    """BGR frames: each colour held for `seconds_each` seconds, with optional per-pixel noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    for color in colors:
        for _ in range(round(seconds_each * fps)):
            img = np.empty((h, w, 3), np.uint8)
            img[:] = color
            if noise:
                img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(
                    np.uint8
                )
            yield img


def moving_frames(seconds: float, fps: float = 25.0, size=(96, 128)):
    """BGR frames with a bar moving across, so that every sampled frame differs from the last."""
    h, w = size
    for i in range(round(seconds * fps)):
        img = np.full((h, w, 3), 30, np.uint8)
        x = int(i * 3) % w
        img[:, x : x + 8] = (255, 255, 255)
        img[: h // 4, :, 1] = (i * 5) % 255
        yield img


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Path]:
    """Write a generated clip: `make_clip("a.mp4", seconds=10)` (moving) or `make_clip("b.mp4", frames=...)`."""

    def make(name: str = "clip.mp4", seconds: float = 10.0, fps: float = 25.0, frames=None, size=(96, 128)) -> Path:
        path = tmp_path / name
        return write_video(path, frames if frames is not None else moving_frames(seconds, fps, size), fps)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `@pytest.mark.gpu` tests on machines without a CUDA GPU (they run wherever one is at hand)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for torch: on a busy 2-core CI machine two threads made small steps up to ~90x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
