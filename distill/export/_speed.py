"""Frames/s of the fp32 and INT8 students on this machine's provider, so export can say whether INT8 pays.

Each file runs on a ready (B, 3, S, S) tensor (the model alone, no preprocessing) at batch 1 and 16. The two
are measured in interleaved rounds and the median round is kept, so load from other processes hits both
alike. A static INT8 graph is not faster everywhere: on CPUs without int8 dot-product instructions, and for
depthwise-heavy students (MobileNet, EfficientNet) whose Q/DQ pairs cost about what the int8 arithmetic saves,
fp32 can win; the figures say which, on the machine that will serve.

This module does not decide anything; it measures. It does not import torch.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

import numpy as np

from distill.export.report import SpeedReport

BATCHES = (1, 16)


def compare_speed(
    paths: dict[str, str | os.PathLike[str]],
    image_size: int,
    input_name: str,
    *,
    providers: Sequence[str] | None = None,
    batches: Sequence[int] = BATCHES,
    seconds: float = 0.25,
    rounds: int = 3,
) -> SpeedReport:
    """Median frames/s of each file in `paths` ({"fp32": ..., "int8": ...}) at each batch size.

    Args:
        providers: ONNX Runtime providers (None: `default_providers()`, the ones `Student` would use).
        seconds: minimum time per measurement; `rounds` measurements per file and batch size.
    """
    from distill.export.runtime import default_providers, open_session

    wanted = list(providers) if providers is not None else default_providers()
    sessions = {name: open_session(path, wanted) for name, path in paths.items()}
    provider = next(iter(sessions.values())).get_providers()[0]
    rng = np.random.default_rng(0)
    fps: dict[str, dict[int, float]] = {name: {} for name in sessions}
    for batch in batches:
        feed = {input_name: rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)}
        runs: dict[str, list[float]] = {name: [] for name in sessions}
        for session in sessions.values():  # warm-up: first runs allocate and pick kernels
            session.run(None, feed)
        for _ in range(rounds):
            for name, session in sessions.items():
                runs[name].append(_fps(session, feed, batch, seconds))
        for name in sessions:
            fps[name][batch] = round(statistics.median(runs[name]), 1)
    return SpeedReport(provider=provider, fps=fps)


def _fps(session, feed: dict[str, np.ndarray], batch: int, seconds: float) -> float:
    """Frames/s of `session.run(feed)` called repeatedly for at least `seconds` (at least twice)."""
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        session.run(None, feed)
        calls += 1
    return batch * calls / (time.perf_counter() - start)
