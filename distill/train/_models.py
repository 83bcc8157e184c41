"""timm models for the student: name checks with close matches, creation (pretrained or not), input-size checks.

Pretrained weights are looked up in the local cache first; the hub is only asked when it answers within a few
seconds, so an offline machine gets one line naming `--no-pretrained` instead of a minute of retries.

This module does not train and does not import Lightning.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from distill.errors import TrainError, first_line

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 3.0


def check_model_name(name: str) -> str:
    """Return `name` if timm knows it, else raise `TrainError` listing close matches."""
    import timm

    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
    raise TrainError(f"unknown timm model {name!r}; {hint} (--model NAME)")


def model_kwargs(name: str, image_size: int) -> dict[str, Any]:
    """Extra `timm.create_model` arguments: models with a fixed input size (ViTs) are built for `image_size`."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return {"img_size": image_size} if cfg is not None and cfg.fixed_input_size else {}


def create_timm(name: str, num_classes: int, image_size: int, *, pretrained: bool = False) -> nn.Module:
    """`timm.create_model(name, num_classes=...)`, with pretrained weights from the cache or a reachable hub.

    Raises:
        TrainError: unknown name, or pretrained weights that cannot be fetched (the fix: `--no-pretrained`).
    """
    import timm

    check_model_name(name)
    kwargs = {"num_classes": num_classes, **model_kwargs(name, image_size)}
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        with _hub_offline():
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # not cached (or a cache miss of another kind): try the network below
        logger.debug("pretrained %s not in the local cache: %s", name, exc)
    host = _weights_host(name)
    fix = "pass --no-pretrained to train from scratch, or put the weights in the Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"} or not _reachable(host):
        raise TrainError(f"cannot fetch pretrained weights for {name} ({host} unreachable or offline); {fix}")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:
        raise TrainError(f"cannot fetch pretrained weights for {name} ({type(exc).__name__}); {fix}") from None


@contextmanager
def _hub_offline():
    """Make huggingface_hub use its local cache only, for the duration of the block."""
    from huggingface_hub import constants  # a dependency of timm

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _weights_host(name: str) -> str:
    """The host the weights of `name` come from (the HF endpoint for hub-hosted weights)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is not None and not cfg.hf_hub_id and cfg.url:
        return urlparse(cfg.url).hostname or "download host"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def _reachable(host: str, port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def check_min_size(name: str, image_size: int) -> None:
    """Raise `TrainError` if `image_size` is below the minimum input size timm records for `name`."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.min_input_size and image_size < cfg.min_input_size[-1]:
        raise TrainError(
            f"image size {image_size} is too small for {name} (min {cfg.min_input_size[-1]}); "
            f"try --image-size {cfg.input_size[-1]}"
        )


def check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    """Run one tiny forward pass at `image_size`; raise `TrainError` if the model cannot take it."""
    import torch
    from timm.models import get_pretrained_cfg

    check_min_size(name, image_size)
    cfg = get_pretrained_cfg(name)
    default = cfg.input_size[-1] if cfg is not None else 224
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise TrainError(
            f"image size {image_size} does not fit {name} ({first_line(exc)}); try --image-size {default}"
        ) from None
    finally:
        model.train(was_training)
