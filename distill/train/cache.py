"""Decoded frames cached as uint8, so the JPEGs of a label set are decoded once per run, not once per epoch.

`build_cache` decodes the selected rows with a thread pool (OpenCV releases the GIL), squashes each whole frame
to `size` x `size` (bilinear, RGB) and stores it in memory, or in a `np.memmap` file when the set is larger than
`memory_limit` bytes. `CachedFrames` serves whole batches from it by fancy indexing (`__getitems__`), so the
DataLoader does almost no per-item Python work; augmentation happens on the batch, on the training device.

This module does not augment or normalise (see `distill.train.augment`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch

from distill._progress import progress_bar
from distill.dataset import decode_image, shard_paths

logger = logging.getLogger(__name__)


def default_memory_limit() -> int:
    """A quarter of physical memory (2 GiB when it cannot be read): above it the cache goes to a memmap file."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def decode_squash(jpeg: bytes, size: int) -> np.ndarray:
    """JPEG bytes -> RGB uint8 (size, size, 3): the whole frame resized (bilinear), no crop."""
    image = cv2.resize(decode_image(jpeg), (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def build_cache(
    sources: Sequence[Path],
    set_index: np.ndarray,
    row: np.ndarray,
    size: int,
    *,
    memmap_path: Path | None = None,
    memory_limit: int | None = None,
    workers: int | None = None,
    show_progress: bool = False,
    description: str = "decoding frames",
) -> np.ndarray:
    """Decode rows (`set_index[i]`, `row[i]`) of the label sets in `sources` into a (N, size, size, 3) uint8 array.

    Args:
        sources: label-set folders, indexed by `set_index`.
        set_index, row: which frame goes to slot i of the cache.
        size: square side of the cached frames.
        memmap_path: file for the cache when it exceeds `memory_limit` (None: always in memory).
        workers: decoding threads (default: the machine's CPU count).
    """
    n = len(row)
    shape = (n, size, size, 3)
    limit = default_memory_limit() if memory_limit is None else memory_limit
    if memmap_path is not None and n * size * size * 3 > limit:
        memmap_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("caching %d frames in %s (larger than %d MiB)", n, memmap_path, limit >> 20)
        cache: np.ndarray = np.lib.format.open_memmap(memmap_path, mode="w+", dtype=np.uint8, shape=shape)
    else:
        cache = np.empty(shape, np.uint8)
    threads = workers or os.cpu_count() or 1
    with progress_bar(description, total=n, enabled=show_progress) as bar, ThreadPoolExecutor(threads) as pool:
        for s, directory in enumerate(sources):
            slots = np.flatnonzero(set_index == s)
            if len(slots):
                _decode_set(directory, row[slots], slots, size, cache, pool, bar)
    if isinstance(cache, np.memmap):
        cache.flush()
    return cache


def _decode_set(directory: Path, rows: np.ndarray, slots: np.ndarray, size: int, cache, pool, bar) -> None:
    order = np.argsort(rows)
    rows, slots = rows[order], slots[order]
    start = 0
    for shard in shard_paths(directory):
        images = pq.read_table(shard, columns=["image"]).column("image")
        lo, hi = np.searchsorted(rows, [start, start + len(images)])
        jobs = [(int(slot), images[int(r) - start].as_py()) for r, slot in zip(rows[lo:hi], slots[lo:hi])]

        def work(job: tuple[int, bytes]) -> None:
            cache[job[0]] = decode_squash(job[1], size)

        for _ in pool.map(work, jobs):
            bar.advance()
        start += len(images)


def _stack(batch: Any) -> Any:
    """Collate for `CachedFrames`: `__getitems__` already returns a stacked batch."""
    return batch


class CachedFrames(torch.utils.data.Dataset):
    """Cached frames with their targets; `__getitems__` returns a whole batch as tensors.

    A batch is `(images (B, S, S, 3) uint8, targets (B, K) float32, labels (B,) int64, teacher_top (B,) int64)`:
    `targets` is the teacher's distribution (or one-hot label), `labels` the teacher's hard label and
    `teacher_top` the argmax of its distribution.
    """

    collate_fn = staticmethod(_stack)

    def __init__(self, images: np.ndarray, targets: np.ndarray, labels: np.ndarray, teacher_top: np.ndarray) -> None:
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.teacher_top = torch.as_tensor(teacher_top, dtype=torch.int64)
        self._path = images.filename if isinstance(images, np.memmap) else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        images = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(indices)]))
        return images, self.targets[idx], self.labels[idx], self.teacher_top[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([index]))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._path is not None:  # workers reopen the memmap instead of receiving a copy of it
            state["images"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.images is None:
            self.images = np.load(self._path, mmap_mode="r")
