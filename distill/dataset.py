"""The label set on disk: Parquet shards plus `manifest.json`.

```
runs/labels/
  manifest.json          classes, resolved config, teacher, prompt, shards (file + rows), counts
  config.yaml            the resolved task config
  shard-00000.parquet    one row per frame (schema: `LABEL_SCHEMA`)
  shard-00001.parquet
  corrections.parquet    a person's labels for some frames (`write_corrections`), if any
```

A shard is written to a temporary file and renamed into place; only then is the manifest (itself written
atomically) updated to list it. A killed writer therefore leaves whole shards only, and a rerun knows exactly
which frames are done (`LabelSetWriter.done`). Files not listed in the manifest are ignored and cleaned up.

Corrections (`distill review --apply`) are rows of a human teacher in their own file; the teacher's rows stay
as they were, and `read_table` / `load_labels` return the corrected label where there is one.

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
CORRECTIONS = "corrections.parquet"
HUMAN = "human"  # the `teacher` of a person's correction rows
_FIXED = ("label", "probs", "confidence", "teacher", "raw")  # the columns a correction replaces
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
            if (self.directory / CORRECTIONS).exists():
                logger.warning("starting %s afresh drops %s (a person's corrections)", self.directory, CORRECTIONS)
            for old in [*self.directory.glob("shard-*.parquet"), self.directory / CORRECTIONS]:
                old.unlink(missing_ok=True)
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

    @property
    def unsaved(self) -> int:
        """Rows added but not yet in a shard (a kill now would lose them)."""
        return len(self._rows)

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


def read_table(
    directory: str | os.PathLike[str], columns: Sequence[str] | None = None, *, corrected: bool = True
) -> pa.Table:
    """All rows of a label set as one Arrow table (optionally only some columns), in shard order.

    With `corrected` (the default) a frame a person corrected (`write_corrections`) carries the correction in
    `label`, `probs`, `confidence`, `teacher` and `raw`; `corrected=False` gives the teacher's own answers.
    """
    directory = Path(directory)
    paths = shard_paths(directory)
    if not paths:
        return LABEL_SCHEMA.empty_table() if columns is None else LABEL_SCHEMA.empty_table().select(list(columns))
    table = pa.concat_tables(pq.read_table(p, columns=list(columns) if columns else None) for p in paths)
    return _apply_corrections(directory, table, read_manifest(directory)) if corrected else table


def load_labels(directory: str | os.PathLike[str]) -> datasets.Dataset:
    """Load a label set as a Hugging Face `datasets.Dataset`, with `image` as an image feature.

    Frames a person corrected carry the corrected label (see `write_corrections`).

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
    if read_corrections(directory):  # replace the corrected columns, keeping the images memory-mapped
        fixed = read_table(directory, columns=list(_FIXED))
        names = ds.column_names
        for name in _FIXED:
            feature = ds.features[name]
            ds = ds.remove_columns(name).add_column(name, fixed.column(name).to_pylist(), feature=feature)
        ds = ds.select_columns(names)
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


# --- corrections: a person's labels, stored beside the teacher's ------------------------------------------------


def _corrections_table(directory: Path, manifest: Mapping[str, Any]) -> pa.Table | None:
    entry = manifest.get("corrections")
    if not entry:
        return None
    path = directory / entry["file"]
    if not path.exists():
        raise DatasetError(f"{directory}: {path.name} is listed but missing; apply your review.csv again")
    return pq.read_table(path)


def read_corrections(directory: str | os.PathLike[str]) -> dict[tuple[str, int], str]:
    """A person's corrections stored in a label set: (video, frame_index) -> class name (empty if none)."""
    directory = Path(directory)
    table = _corrections_table(directory, read_manifest(directory))
    if table is None:
        return {}
    keys = zip(table.column("video").to_pylist(), table.column("frame_index").to_pylist())
    return {(v, int(f)): label for (v, f), label in zip(keys, table.column("label").to_pylist())}


def write_corrections(directory: str | os.PathLike[str], corrections: Mapping[tuple[str, int], str]) -> int:
    """Store a person's labels for some frames as rows of a human teacher (one-hot `probs`, confidence 1).

    They go to `corrections.parquet` (listed in the manifest), merged with earlier corrections frame by frame
    (the newer label wins); the teacher's rows stay as they are. From then on `read_table` and `load_labels`
    return the corrected label. Storing the same corrections again changes nothing.

    Returns:
        how many frames got a new or different correction.

    Raises:
        DatasetError: a class that is not the set's, or a frame the set does not hold.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    classes = list(manifest["classes"])
    for (video, index), label in corrections.items():
        if label not in classes:
            raise DatasetError(f"correction {label!r} for {video} frame {index} is not a class ({', '.join(classes)})")
    earlier = read_corrections(directory)
    new = {k: v for k, v in corrections.items() if earlier.get(k) != v}
    if not new:
        return 0
    table = read_table(directory, columns=["video", "frame_index", "timestamp_s"], corrected=False)
    where = {
        k: i for i, k in enumerate(zip(table.column("video").to_pylist(), table.column("frame_index").to_pylist()))
    }
    missing = [k for k in new if k not in where]
    if missing:
        video, index = missing[0]
        raise DatasetError(
            f"{directory} holds no frame {index} of {video!r}; correct only frames the label set holds (review.csv)"
        )
    merged = {k: v for k, v in sorted((earlier | new).items()) if k in where}  # frames still in the set
    images = _cells(directory, [where[k] for k in merged], "image")
    rows = []
    for (video, index), label in merged.items():
        i = where[(video, index)]
        one_hot = [1.0 if c == label else 0.0 for c in classes]
        rows.append(label_row(video, index, table.column("timestamp_s")[i].as_py(), images[i], label, one_hot,
                              teacher=HUMAN))  # fmt: skip
    fixed = pa.Table.from_pylist(rows, schema=LABEL_SCHEMA)
    write_atomic(directory / CORRECTIONS, lambda fh: pq.write_table(fixed, fh, compression="zstd"))
    per_class = {c: 0 for c in classes}
    for label in fixed.column("label").to_pylist():
        per_class[label] += 1
    manifest["corrections"] = {"file": CORRECTIONS, "rows": fixed.num_rows, "per_class": per_class}
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"))
    return len(new)


def _cells(directory: Path, rows: Sequence[int], column: str) -> dict[int, Any]:
    """One column's values at some row numbers (read_table order), reading only the shards that hold them."""
    out: dict[int, Any] = {}
    start = 0
    for path in shard_paths(directory):
        n = pq.ParquetFile(path).metadata.num_rows
        wanted = [r for r in rows if start <= r < start + n]
        if wanted:
            values = pq.read_table(path, columns=[column]).column(column)
            out.update({r: values[r - start].as_py() for r in wanted})
        start += n
    return out


def _apply_corrections(directory: Path, table: pa.Table, manifest: Mapping[str, Any]) -> pa.Table:
    """`table` (all rows of the set, in shard order) with corrected frames' label columns replaced."""
    fixes = _corrections_table(directory, manifest)
    if fixes is None or fixes.num_rows == 0 or not set(_FIXED) & set(table.column_names):
        return table
    keys = table if {"video", "frame_index"} <= set(table.column_names) else None
    if keys is None:
        keys = read_table(directory, columns=["video", "frame_index"], corrected=False)
    pos = {k: i for i, k in enumerate(zip(fixes.column("video").to_pylist(), fixes.column("frame_index").to_pylist()))}
    rows = [pos.get(k, -1) for k in zip(keys.column("video").to_pylist(), keys.column("frame_index").to_pylist())]
    if max(rows, default=-1) < 0:
        return table
    for name in _FIXED:
        if name not in table.column_names:
            continue
        old, new = table.column(name).to_pylist(), fixes.column(name).to_pylist()
        values = [new[r] if r >= 0 else o for r, o in zip(rows, old)]
        column = pa.array(values, type=LABEL_SCHEMA.field(name).type)
        table = table.set_column(table.column_names.index(name), table.schema.field(name), column)
    return table
