"""The student checkpoint: a Lightning `.ckpt` that carries its own `StudentMeta`.

A checkpoint is a torch-saved dict whose `state_dict` holds the timm model's weights under the prefix `model.`
(what `StudentModule` saves) and whose `"distill"` entry is `StudentMeta.to_dict()`: class names and texts, the
teacher's question and prompt, timm name, preprocessing, the held-out split, provenance and training metrics
(see `distill.train.meta` for the fields). `preprocessing` lives here because it asks timm for mean/std.

Example:
    >>> model, meta = load_student("runs/student/student.ckpt")  # doctest: +SKIP
    >>> logits = model(torch.zeros(1, 3, meta.image_size, meta.image_size))  # (1, K)

This module does not train and does not import Lightning; `save_student` writes a minimal checkpoint of the
same layout (for tools and tests), while training writes full ones through Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill._files import write_atomic
from distill.errors import ExportError, TrainError, first_line
from distill.train._models import create_timm, model_kwargs
from distill.train.meta import CHECKPOINT_KEY, StudentMeta

if TYPE_CHECKING:
    from torch import nn

STATE_PREFIX = "model."


def preprocessing(model: nn.Module | str, image_size: int) -> dict[str, Any]:
    """The preprocessing of a student: size, mean/std from timm's pretrained_cfg, squash resize, bilinear.

    Args:
        model: a timm model (its `pretrained_cfg` is read) or a timm model name.
        image_size: the square input size.
    """
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    if isinstance(model, str):
        cfg = get_pretrained_cfg(model)
        data = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    else:
        data = resolve_data_config({}, model=model)
    return {
        "image_size": int(image_size),
        "mean": tuple(float(x) for x in data["mean"]),
        "std": tuple(float(x) for x in data["std"]),
    }  # channel order, resize and interpolation: StudentMeta's defaults (RGB, squash, bilinear)


def build_meta(classes: Sequence[str], model: str, image_size: int, **fields: Any) -> StudentMeta:
    """The `StudentMeta` of a student of timm model `model`: its preprocessing from timm, plus `fields`.

    Args:
        classes: label ids in logit order.
        model: the timm name.
        image_size: the square input side.
        fields: any other `StudentMeta` field (class_texts, question, prompt, source_short_side, split,
            teacher, label_set, metrics).

    Raises:
        TrainError: a value `StudentMeta` refuses (e.g. fewer than two classes).
    """
    try:
        return StudentMeta(classes=tuple(classes), model=model, **preprocessing(model, image_size), **fields)
    except ExportError as exc:
        raise TrainError(str(exc)) from None


def create_student(meta: StudentMeta, *, pretrained: bool = False) -> nn.Module:
    """Build the timm model a meta describes (random or pretrained weights; the head has len(classes) outputs)."""
    return create_timm(meta.model, len(meta.classes), meta.image_size, pretrained=pretrained)


def save_student(model: nn.Module, meta: StudentMeta, path: str | os.PathLike[str]) -> Path:
    """Write a minimal student checkpoint (same layout as a training checkpoint), atomically; return its path."""
    import torch

    if not isinstance(meta, StudentMeta):
        raise TrainError(f"{path}: save_student takes a StudentMeta; build one with distill.train.build_meta")
    state = {STATE_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": state, CHECKPOINT_KEY: meta.to_dict()}
    return write_atomic(path, lambda fh: torch.save(checkpoint, fh))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU (tensors and plain types only), with one-line errors."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist; run `distill train` first or check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise TrainError(
            f"cannot read checkpoint {path} ({first_line(exc)}); point at a student.ckpt from `distill train`"
        ) from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise TrainError(
            f"{path} is not a distill student checkpoint (no {CHECKPOINT_KEY!r} meta); use one `distill train` wrote"
        )
    return ckpt


def meta_of(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> StudentMeta:
    """The `StudentMeta` stored in a checkpoint dict (`read_checkpoint`); `TrainError` if it is unreadable."""
    try:
        return StudentMeta.from_dict(ckpt[CHECKPOINT_KEY], path)
    except ExportError as exc:
        raise TrainError(str(exc)) from None


def read_meta(path: str | os.PathLike[str]) -> StudentMeta:
    """The `StudentMeta` of a student checkpoint, without building the model."""
    return meta_of(read_checkpoint(path), path)


def load_student(path: str | os.PathLike[str]) -> tuple[nn.Module, StudentMeta]:
    """Load a student checkpoint: (timm model in eval mode returning logits (B, K), its `StudentMeta`).

    The model takes float input (B, 3, image_size, image_size), RGB, already normalised with meta's mean/std.

    Raises:
        TrainError: the file is missing, unreadable, or not a distill student checkpoint.
    """
    ckpt = read_checkpoint(path)
    meta = meta_of(ckpt, path)
    model = create_student(meta, pretrained=False)
    state = {k[len(STATE_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TrainError(
            f"checkpoint {path} does not match model {meta.model} ({first_line(exc)}); retrain it"
        ) from None
    return model.eval(), meta


__all__ = [
    "CHECKPOINT_KEY",
    "build_meta",
    "create_student",
    "load_student",
    "meta_of",
    "model_kwargs",
    "preprocessing",
    "read_checkpoint",
    "read_meta",
    "save_student",
]
