"""The training run behind `distill train`: label set in, student checkpoint and figures out.

Steps: read the label set(s) -> audit the labels (label_audit.json) -> split by video (splits.json) -> decode the
frames once into a uint8 cache -> train with Lightning (best checkpoint by val agreement with the teacher, early
stopping, CSV/TensorBoard logs) -> measure the best checkpoint on the val split (metrics.json, also stored in the
checkpoint meta) -> save the resolved config (config.yaml).

```
out_dir/
  student.ckpt  last.ckpt  metrics.json  splits.json  label_audit.json  config.yaml  logs/
```

This module does not export ONNX (`distill train` chains `distill.export.export_onnx` after it) and does not
print: `report(kind, data)` receives the audit and the splits as soon as they are known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import numpy as np
import torch

from distill._files import write_atomic
from distill.config import TaskConfig, parse_classes, save_config
from distill.errors import ConfigError, TrainError
from distill.train._models import check_input_size, check_min_size, check_model_name, create_timm
from distill.train.audit import audit_labels
from distill.train.cache import CachedFrames, build_cache
from distill.train.checkpoint import CHECKPOINT_KEY, build_meta, meta_of, read_checkpoint, read_meta
from distill.train.data import TRAIN, VAL, Rows, load_rows, make_splits
from distill.train.meta import HeldOutSplit, StudentMeta
from distill.train.metrics import predict, student_metrics
from distill.train.module import StudentModule

logger = logging.getLogger(__name__)

CACHE_MARGIN = 1.15  # training frames are cached this much larger than image_size, for the random crops
BALANCE_RATIO = 2.0  # largest / smallest class count above which training samples classes evenly
Report = Callable[[str, dict[str, Any]], None]


@dataclass
class TrainSummary:
    """What a training run produced, and its figures."""

    out_dir: Path
    checkpoint: Path  # best by val agreement
    classes: list[str]
    model: str
    soft: bool
    balanced: bool
    epochs: int  # epochs completed (counting those before a resume)
    best_epoch: int | None
    audit: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def run_train(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: TaskConfig,
    *,
    extra: Sequence[str | os.PathLike[str]] = (),
    accelerator: str = "auto",
    devices: str | int = "auto",
    precision: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
    num_workers: int | None = None,
    balance: bool | None = None,
    report: Report | None = None,
) -> TrainSummary:
    """Train a student on a label set (plus `extra` sets, training split only) and write its outputs.

    Args:
        labels_dir: the label set `distill label` wrote; classes come from its manifest.
        out_dir: folder for the checkpoint and figures.
        cfg: the task config (`student` and `train` sections are used).
        extra: more label sets with the same classes (e.g. hard examples `serve` saved); training only.
        accelerator, devices, precision: passed to `lightning.Trainer` (precision None: bf16-mixed on a
            CUDA GPU that supports it, else 32-true).
        resume: a checkpoint of this run (`last.ckpt`) to continue from (more `--epochs` train longer).
        num_workers: DataLoader workers (None: sized to the machine and the set).
        balance: sample classes evenly (None: when the largest class has over 2x the frames of the smallest).
        report: called with ("audit", dict) and ("splits", dict) before training starts.

    Raises:
        DatasetError: missing, empty or one-class label sets.
        ConfigError: the config names classes other than the label set's.
        TrainError: unknown model, image size the model cannot take, unfetchable weights, bad resume checkpoint.
    """
    start = time.perf_counter()
    name, size = check_model_name(cfg.student.model), cfg.student.image_size
    check_min_size(name, size)
    rows = load_rows(labels_dir, extra)
    if cfg.classes and set(cfg.class_names) != set(rows.classes):
        raise ConfigError(
            f"the config's classes ({', '.join(cfg.class_names)}) differ from the label set's "
            f"({', '.join(rows.classes)}); pass the --config the labels were made with, or none"
        )
    if resume is not None:
        _check_resume(Path(resume), rows.classes, name, size)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model = create_timm(name, len(rows.classes), size, pretrained=cfg.student.pretrained and resume is None)
    check_input_size(model, name, size)
    audit = audit_labels(rows)
    split, splits = make_splits(rows, cfg.train.val_fraction, cfg.train.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main_process = _rank() == 0  # DDP runs this function once per device; one of them writes and reports
    for kind, data, file in (("audit", audit, "label_audit.json"), ("splits", splits, "splits.json")):
        if main_process:
            _write_json(out / file, data)
        if report and main_process:
            report(kind, data)
    soft = cfg.train.soft and bool(rows.has_probs[split >= 0].any())
    meta = _meta(rows, name, size, labels_dir, extra, splits["held_out"])
    module = StudentModule(
        model, meta, soft=soft, temperature=cfg.train.temperature, mixup_alpha=cfg.train.mixup,
        lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
    )  # fmt: skip
    cache = out / "cache" / f"{os.getpid()}"  # memmap files (large sets only), one folder per DDP process
    train_loader, val_loader, balanced = make_loaders(
        rows, split, size, cfg.train.batch_size, cache, num_workers=num_workers, balance=balance,
        pin=torch.cuda.is_available() and accelerator != "cpu", show_progress=show_progress,
    )  # fmt: skip
    try:
        trainer = _fit(
            module, train_loader, val_loader, cfg, out, accelerator, devices, precision, resume, show_progress
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        with contextlib.suppress(OSError):
            (out / "cache").rmdir()
    best = Path(trainer.checkpoint_callback.best_model_path or out / "last.ckpt")
    summary = TrainSummary(
        out, best, rows.classes, name, soft, balanced, int(trainer.current_epoch), None, audit, splits
    )
    if not trainer.is_global_zero:  # other DDP ranks stop here; rank 0 writes the outputs
        return summary
    summary.metrics, summary.best_epoch = _measure(module, best, val_loader, trainer.strategy.root_device, rows.classes)
    _write_json(out / "metrics.json", summary.metrics)
    resolved = cfg if cfg.classes else dataclasses.replace(cfg, classes=parse_classes(rows.classes))
    save_config(resolved, out / "config.yaml")
    summary.seconds = round(time.perf_counter() - start, 2)
    return summary


def make_loaders(
    rows: Rows,
    split: np.ndarray,
    image_size: int,
    batch_size: int,
    cache_dir: Path | None,
    *,
    num_workers: int | None = None,
    balance: bool | None = None,
    pin: bool = False,
    show_progress: bool = False,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader, bool]:
    """Decode the train and val frames into caches; return (train loader, val loader, balanced?)."""
    train, val = rows.select(split == TRAIN), rows.select(split == VAL)
    cached = []
    for part, size, tag in ((train, round(image_size * CACHE_MARGIN), "train"), (val, image_size, "val")):
        images = build_cache(
            part.sources, part.set_index, part.row, size, show_progress=show_progress,
            memmap_path=cache_dir / f"{tag}.npy" if cache_dir else None, description=f"decoding {tag} frames",
        )  # fmt: skip
        cached.append(CachedFrames(images, part.probs, part.label, part.teacher_top))
    train_ds, val_ds = cached
    sampler, balanced = _sampler(train.label, len(rows.classes), balance)
    workers = _workers(num_workers, len(train_ds))
    common = {"collate_fn": CachedFrames.collate_fn, "num_workers": workers, "pin_memory": pin}
    common["persistent_workers"] = workers > 0
    bs = min(batch_size, len(train_ds))
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=bs, sampler=sampler, shuffle=sampler is None, drop_last=len(train_ds) > bs, **common
    )
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=2 * batch_size, shuffle=False, **common)
    return train_loader, val_loader, balanced


def _sampler(labels: np.ndarray, k: int, balance: bool | None) -> tuple[torch.utils.data.Sampler | None, bool]:
    counts = np.bincount(labels, minlength=k)
    present = counts[counts > 0]
    if balance is None:
        balance = bool(present.max() > BALANCE_RATIO * present.min())
    if not balance:
        return None, False
    weights = 1.0 / counts[labels]
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), len(labels), replacement=True), True


def _workers(requested: int | None, n: int) -> int:
    """Batches are sliced from an in-memory cache, so a few workers suffice; none for small sets."""
    if requested is not None:
        return max(0, requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if n < 4096 or cpus < 4 else min(4, cpus // 4)


def _rank() -> int:
    """This process's global rank (0 outside DDP), as Lightning reads it from the environment."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _check_resume(path: Path, classes: list[str], model: str, image_size: int) -> None:
    old = read_meta(path)
    recorded = {"classes": list(old.classes), "model": old.model, "image_size": old.image_size}
    for key, value in (("classes", classes), ("model", model), ("image_size", image_size)):
        if recorded[key] != value:
            raise TrainError(
                f"cannot resume from {path}: its {key} is {recorded[key]!r}, this run's {value!r}; "
                "use the same label set and --model/--image-size, or drop --resume"
            )


def _meta(rows: Rows, name: str, size: int, labels_dir, extra, held_out: HeldOutSplit) -> StudentMeta:
    """The student's meta: classes and what the teacher was asked (from the label set's manifest), the
    preprocessing, the held-out split, and the teacher and label-set provenance."""
    label_set = {"path": str(Path(labels_dir).resolve()), "frames": int((rows.label >= 0).sum())}
    label_set |= {"classes": rows.classes, "extra": [str(Path(p).resolve()) for p in extra]}
    task = rows.manifest.get("config") or {}
    teacher = dict(rows.manifest.get("teacher") or {})
    try:
        texts = {spec.name: spec.text for spec in parse_classes(task.get("classes") or [])}
    except ConfigError:  # a set written without a task config (or a foreign one): the names are the texts
        texts = {}
    # the short side `distill label` stored frames at: serving shrinks larger frames the same way first
    stored = (task.get("sampling") or {}).get("image_size", 0)
    return build_meta(
        rows.classes, name, size, class_texts=tuple(texts.get(c, c) for c in rows.classes),
        question=task.get("question"), prompt=teacher.get("prompt"), source_short_side=int(stored or 0),
        split=held_out, teacher=teacher, label_set=label_set,
    )  # fmt: skip


def _fit(module, train_loader, val_loader, cfg, out, accelerator, devices, precision, resume, show_progress):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    checkpoint = ModelCheckpoint(
        dirpath=out, filename="student", monitor="val_agreement", mode="max",
        enable_version_counter=False, auto_insert_metric_name=False,
    )  # fmt: skip
    last = ModelCheckpoint(dirpath=out, filename="last", enable_version_counter=False)  # every epoch, for --resume
    stop = EarlyStopping(monitor="val_agreement", mode="max", patience=cfg.train.patience)
    with _quiet_lightning(show_progress):
        trainer = L.Trainer(
            max_epochs=cfg.train.epochs, accelerator=accelerator, devices=devices,
            precision=precision or _default_precision(accelerator), callbacks=[checkpoint, last, stop],
            logger=_loggers(out), enable_progress_bar=show_progress, enable_model_summary=False,
            log_every_n_steps=max(1, min(50, len(train_loader))), default_root_dir=out,
        )  # fmt: skip
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume) if resume else None)
    return trainer


def _default_precision(accelerator: str) -> str:
    cuda = accelerator in {"auto", "gpu", "cuda"} and torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def _loggers(out: Path) -> list[Any]:
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = [CSVLogger(out, name="logs")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(out, name="logs", version=loggers[0].version))
    return loggers


@contextmanager
def _quiet_lightning(show_progress: bool):
    """Keep Lightning's banners ("GPU available", tips) and hints about tiny sets out of the user's way."""
    names = ["lightning.pytorch", "lightning.fabric", "lightning"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(
            logging.INFO if show_progress and logger.isEnabledFor(logging.INFO) else logging.WARNING
        )
    try:
        with warnings.catch_warnings():
            for pattern in (
                ".*does not have many workers.*",
                ".*smaller than the logging interval.*",
                ".*`isinstance.*LeafSpec.*",
                ".*exists and is not empty.*",
            ):
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _measure(
    module: StudentModule, best: Path, val_loader, device, classes: list[str]
) -> tuple[dict[str, Any], int | None]:
    """Load the best weights, measure them on the val split, and store the figures in the checkpoint's meta."""
    ckpt = read_checkpoint(best)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    module.model.load_state_dict(state)
    probs, labels, tops = predict(module, val_loader, device)
    metrics = student_metrics(probs, labels, tops, classes)
    epoch = ckpt.get("epoch")
    metrics["best_epoch"] = epoch
    recorded = {k: metrics[k] for k in ("agreement", "accuracy", "macro_f1", "frames")}
    ckpt[CHECKPOINT_KEY] = meta_of(ckpt, best).replace(metrics=recorded).to_dict()
    write_atomic(best, lambda fh: torch.save(ckpt, fh))
    return metrics, epoch


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    """JSON for the typed values in reports (the `HeldOutSplit` in the splits report)."""
    if isinstance(value, HeldOutSplit):
        return value.to_dict()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
