"""The student checkpoint: a Lightning `.ckpt` that carries its own preprocessing and class names.

A checkpoint is a torch-saved dict whose `state_dict` holds the timm model's weights under the prefix `model.`
(what `StudentModule` saves) and whose `"distill"` entry holds the meta:

```
classes        ["idle", "active", ...]        output order of the logits
model          "mobilenetv3_small_100"        timm name; rebuilt with pretrained=False
image_size     224                            square input, H = W
mean, std      [0.485, ...], [0.229, ...]     RGB, 0..1 scale (timm's pretrained_cfg of the model)
channel_order  "RGB"
resize         "squash"                       whole frame resized to image_size x image_size, no crop
interpolation  "bilinear"
teacher        {...}                          from the label-set manifest
label_set      {path, frames, classes}
metrics        {...}                          may be empty
```

Example:
    >>> model, meta = load_student("runs/student/student.ckpt")  # doctest: +SKIP
    >>> logits = model(torch.zeros(1, 3, meta["image_size"], meta["image_size"]))  # (1, K)

This module does not train and does not import Lightning; `save_student` writes a minimal checkpoint of the
same layout (for tools and tests), while training writes full ones through Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import TrainError
from distill.train._models import create_timm, model_kwargs

if TYPE_CHECKING:
    from torch import nn

CKPT_KEY = "distill"
STATE_PREFIX = "model."
FORMAT = "distill-student/1"
RESIZE = "squash"
INTERPOLATION = "bilinear"
CHANNEL_ORDER = "RGB"
META_KEYS = ("classes", "model", "image_size", "mean", "std", "channel_order", "resize", "interpolation")


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
        "mean": [float(x) for x in data["mean"]],
        "std": [float(x) for x in data["std"]],
        "channel_order": CHANNEL_ORDER,
        "resize": RESIZE,
        "interpolation": INTERPOLATION,
    }


def build_meta(
    classes: Sequence[str],
    model: str,
    image_size: int,
    *,
    teacher: Mapping[str, Any] | None = None,
    label_set: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The meta dict stored in a student checkpoint (see the module docstring for the keys)."""
    return {
        "format": FORMAT,
        "classes": [str(c) for c in classes],
        "model": model,
        **preprocessing(model, image_size),
        "teacher": dict(teacher or {}),
        "label_set": dict(label_set or {}),
        "metrics": dict(metrics or {}),
    }


def create_student(meta: Mapping[str, Any], *, pretrained: bool = False) -> nn.Module:
    """Build the timm model a meta describes (random or pretrained weights; the head has len(classes) outputs)."""
    return create_timm(meta["model"], len(meta["classes"]), int(meta["image_size"]), pretrained=pretrained)


def save_student(model: nn.Module, meta: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a minimal student checkpoint (same layout as a training checkpoint) and return its path."""
    import torch

    _check_meta(dict(meta), str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {STATE_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, CKPT_KEY: dict(meta)}, path)
    return path


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
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise TrainError(
            f"cannot read checkpoint {path} ({first}); point at a student.ckpt from `distill train`"
        ) from None
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise TrainError(
            f"{path} is not a distill student checkpoint (no {CKPT_KEY!r} meta); use one `distill train` wrote"
        )
    _check_meta(ckpt[CKPT_KEY], str(path))
    return ckpt


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The meta of a student checkpoint, without building the model."""
    return dict(read_checkpoint(path)[CKPT_KEY])


def load_student(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Load a student checkpoint: (timm model in eval mode returning logits (B, K), meta).

    The model takes float input (B, 3, image_size, image_size), RGB, already normalised with meta's mean/std.

    Raises:
        TrainError: the file is missing, unreadable, or not a distill student checkpoint.
    """
    ckpt = read_checkpoint(path)
    meta = dict(ckpt[CKPT_KEY])
    model = create_student(meta, pretrained=False)
    state = {k[len(STATE_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:160]
        raise TrainError(f"checkpoint {path} does not match model {meta['model']} ({first}); retrain it") from None
    return model.eval(), meta


def _check_meta(meta: Any, where: str) -> None:
    if not isinstance(meta, dict):
        raise TrainError(f"{where}: student meta must be a dict; rebuild it with distill.train.build_meta")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise TrainError(f"{where}: student meta lacks {', '.join(missing)}; rebuild it with distill.train.build_meta")
    if len(meta["classes"]) < 2:
        raise TrainError(f"{where}: a student needs at least two classes (got {len(meta['classes'])})")


__all__ = [
    "CKPT_KEY",
    "build_meta",
    "create_student",
    "load_student",
    "model_kwargs",
    "preprocessing",
    "read_meta",
    "save_student",
]
