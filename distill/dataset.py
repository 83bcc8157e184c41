"""The label set on disk: Parquet shards plus `manifest.json`.

```
runs/labels/
  manifest.json          classes, resolved config, teacher, prompt, shards (file + rows), counts
  config.yaml            the resolved task config
  shard-00000.parquet    one row per frame (schema: `LABEL_SCHEMA`)
  shard-00001.parquet
```

A shard is written to a temporary file and renamed into place; only then is the manifest (itself written
atomically) updated to list it. A killed writer therefore leaves whole shards only, and a rerun knows exactly
which frames are done (`LabelSetWriter.done`). Files not listed in the manifest are ignored and cleaned up.

Example:
    >>> with LabelSetWriter("runs/labels", ["a", "b"], {"backend": "annotations"}) as w:  # doctest: +SKIP
    ...     w.add({"video": "x.mp4", "frame_index": 0, "timestamp_s": 0.0, "image": jpeg, "label": "a",
    ...            "probs": [1.0, 0.0], "confidence": 1.0, "teacher": "annotations", "raw": None})
    >>> ds = load_labels("runs/labels")  # doctest: +SKIP

This module does not decide labels or sample frames; it only stores and reads them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill._files import write_atomic
from distill.errors import DatasetError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

FORMAT = "distill-labels/1"
MANIFEST = "manifest.json"
LABEL_SCHEMA = pa.schema(
    [
        pa.field("video", pa.string(), nullable=False),  # path relative to the input root
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # JPEG bytes
        pa.field("label", pa.string()),  # class name; null when the teacher's answer matched no class
        pa.field("probs", pa.list_(pa.float32())),  # over the classes, in manifest order
        pa.field("confidence", pa.float32()),
        pa.field("teacher", pa.string()),  # backend + model id + mode
        pa.field("raw", pa.string()),  # the teacher's raw text, where it generated any
    ]
)


def label_row(
    video: str,
    frame_index: int,
    timestamp_s: float,
    image: bytes,
    label: str | None,
    probs: Sequence[float],
    *,
    teacher: str,
    raw: str | None = None,
) -> dict[str, Any]:
    """One row of `LABEL_SCHEMA`: a frame (JPEG bytes) and a teacher's answer for it.

    `confidence` is the largest probability (0 for an empty distribution).
    """
    values = [float(p) for p in probs]
    return {
        "video": video,
        "frame_index": int(frame_index),
        "timestamp_s": float(timestamp_s),
        "image": image,
        "label": label,
        "probs": values,
        "confidence": max(values) if values else 0.0,
        "teacher": teacher,
        "raw": raw,
    }


def decode_image(jpeg: bytes) -> np.ndarray:
    """A label set's stored frame as BGR uint8 (H, W, 3), as OpenCV and `Student` take it.

    Raises:
        DatasetError: the bytes are not a readable image.
    """
    import cv2

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError("a label-set frame is not a readable JPEG; label those videos again")
    return image


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a label set; raises `DatasetError` if there is none or it is unreadable."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise DatasetError(f"label set {directory} does not exist; run `distill label` first or check the path")
    if not path.exists():
        raise DatasetError(f"{directory} is not a label set (no {MANIFEST}); point at the folder `distill label` wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}; delete the folder and label again") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class LabelSetWriter:
    """Append rows to a label set, a shard at a time, resumably.

    Opening an existing set with the same classes and teacher resumes it (`done` lists finished frames);
    different classes or teacher raise `DatasetError` unless `overwrite=True`, which starts afresh.

    Args:
        directory: the label set folder (created if needed).
        classes: class names, in the order of `probs`.
        teacher: a JSON-able description of the teacher (backend, model, mode, prompt, ...).
        config: the resolved task config as a dict, stored in the manifest.
        shard_rows: rows per shard; a killed run loses at most this many unsaved frames.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        classes: Sequence[str],
        teacher: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        shard_rows: int = 512,
        overwrite: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.classes = list(classes)
        self.teacher = dict(teacher)
        self.shard_rows = shard_rows
        self._rows: list[dict[str, Any]] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / MANIFEST).exists() and not overwrite:
            self.manifest = read_manifest(self.directory)
            self._check_compatible()
        else:
            for old in self.directory.glob("shard-*.parquet"):
                old.unlink()
            self.manifest = {
                "format": FORMAT,
                "classes": self.classes,
                "teacher": self.teacher,
                "config": dict(config or {}),
                "shards": [],
                "counts": {"frames": 0, "per_class": {c: 0 for c in self.classes}, "unmatched": 0},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self._write_manifest()
        self._clean_orphans()
        self.done: set[tuple[str, int]] = set(_keys(self.directory, self.manifest))

    def _check_compatible(self) -> None:
        if self.manifest["classes"] != self.classes:
            raise DatasetError(
                f"{self.directory} was labelled with classes {self.manifest['classes']}, not {self.classes}; "
                "use another --out or pass --overwrite"
            )
        old = {k: v for k, v in self.manifest["teacher"].items() if k != "stats"}
        new = {k: v for k, v in self.teacher.items() if k != "stats"}
        if old != new:
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise DatasetError(
                f"{self.directory} was labelled by a different teacher ({', '.join(changed)} differ); "
                "use another --out or pass --overwrite"
            )

    def _clean_orphans(self) -> None:
        listed = {s["file"] for s in self.manifest["shards"]}
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp") or (path.name.startswith("shard-") and path.name not in listed):
                logger.info("removing unfinished file %s", path.name)
                path.unlink()

    def add(self, row: Mapping[str, Any]) -> None:
        """Queue one row; a shard is written every `shard_rows` rows."""
        self._rows.append(dict(row))
        self.done.add((row["video"], int(row["frame_index"])))
        if len(self._rows) >= self.shard_rows:
            self.flush()

    def add_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        """Write queued rows as one shard (atomically), then list it in the manifest (atomically)."""
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=LABEL_SCHEMA)
        name = f"shard-{len(self.manifest['shards']):05d}.parquet"
        write_atomic(self.directory / name, lambda fh: pq.write_table(table, fh, compression="zstd"))
        counts = self.manifest["counts"]
        counts["frames"] += table.num_rows
        for label in table.column("label").to_pylist():
            if label is None:
                counts["unmatched"] += 1
            else:
                counts["per_class"][label] = counts["per_class"].get(label, 0) + 1
        self.manifest["shards"].append({"file": name, "rows": table.num_rows})
        self._write_manifest()
        self._rows = []

    def update(self, **fields: Any) -> None:
        """Set top-level manifest fields (e.g. run statistics) and save the manifest."""
        self.manifest.update(fields)
        self._write_manifest()

    def _write_manifest(self) -> None:
        data = json.dumps(self.manifest, indent=2, sort_keys=False).encode("utf-8")
        write_atomic(self.directory / MANIFEST, data)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> LabelSetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keys(directory: Path, manifest: Mapping[str, Any]) -> Iterable[tuple[str, int]]:
    for shard in manifest["shards"]:
        table = pq.read_table(directory / shard["file"], columns=["video", "frame_index"])
        yield from zip(table.column("video").to_pylist(), table.column("frame_index").to_pylist())


def shard_paths(directory: str | os.PathLike[str]) -> list[Path]:
    """The shard files a label set's manifest lists (whole shards only)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    paths = [directory / s["file"] for s in manifest["shards"]]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DatasetError(f"{directory}: shard {missing[0]} is listed but missing; rerun `distill label` to redo it")
    return paths


def read_table(directory: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of a label set as one Arrow table (optionally only some columns)."""
    paths = shard_paths(directory)
    if not paths:
        return LABEL_SCHEMA.empty_table() if columns is None else LABEL_SCHEMA.empty_table().select(list(columns))
    return pa.concat_tables(pq.read_table(p, columns=list(columns) if columns else None) for p in paths)


def load_labels(directory: str | os.PathLike[str]) -> datasets.Dataset:
    """Load a label set as a Hugging Face `datasets.Dataset`, with `image` as an image feature.

    Example:
        >>> ds = load_labels("runs/labels")  # doctest: +SKIP
        >>> ds[0]["label"], ds[0]["image"].size  # doctest: +SKIP
        ('active', (569, 320))
    """
    import datasets

    paths = shard_paths(directory)
    if not paths:
        raise DatasetError(f"label set {directory} has no frames yet; run `distill label` to fill it")
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in paths], split="train")
    return ds.cast_column("image", datasets.Image())


def split_by_video(videos: Iterable[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split video names into (train, val) with a fixed seed; no video is in both.

    With two or more videos, at least one goes to each side. The split depends only on the set of names and
    the seed, not on their order.
    """
    names = sorted(set(videos))
    if len(names) < 2:
        return names, []
    rng = random.Random(seed)
    rng.shuffle(names)
    n_val = min(max(1, round(len(names) * val_fraction)), len(names) - 1)
    return sorted(names[n_val:]), sorted(names[:n_val])
