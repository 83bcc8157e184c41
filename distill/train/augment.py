"""Batch augmentation for fixed cameras, on the training device, plus mixup of images and distributions.

Fixed cameras see the same scene from the same place, so augmentation stays mild: a random-resized crop
covering most of the frame with a near-square aspect (the frame is squashed, and lamps at the edges must stay
in view), brightness / contrast / saturation jitter (lighting changes through the day), and an occasional
Gaussian blur (focus, compression). No flips: left and right mean something on a machine panel.

Every image of a batch gets its own crop and jitter, but the work is done for the whole batch at once
(`affine_grid` + `grid_sample`, broadcast arithmetic, torchvision's `gaussian_blur` on the tensor), so it
costs a few percent of a training step on a CPU and next to nothing on a GPU.

This module does not read frames or compute losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all mild by default)."""

    scale: tuple[float, float] = (0.7, 1.0)  # crop area, as a fraction of the frame
    ratio: tuple[float, float] = (0.85, 1.18)  # crop aspect (w / h)
    brightness: float = 0.25  # factor in [1 - b, 1 + b]
    contrast: float = 0.25
    saturation: float = 0.25
    blur_p: float = 0.2  # share of images blurred
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # in pixels of the output


def to_float(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in 0..1."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def random_resized_crop(
    x: torch.Tensor, size: int, cfg: AugmentConfig, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image random crops of `x` (B, 3, H, W), resampled (bilinear) to (B, 3, size, size)."""
    b = x.shape[0]
    area = _uniform(b, *cfg.scale, x, gen)
    log_ratio = _uniform(b, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), x, gen)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fraction of the width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (_uniform(b, -1.0, 1.0, x, gen)) * (1 - w)  # centre, in [-1, 1] coordinates
    ty = (_uniform(b, -1.0, 1.0, x, gen)) * (1 - h)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, tx], 1), torch.stack([zero, h, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors on (B, 3, H, W) in 0..1."""
    b = x.shape[0]
    x = x * _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, x, gen).view(b, 1, 1, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, x, gen).view(b, 1, 1, 1)
    x = (x - mean) * c + mean
    gray = (gray - mean) * c + mean
    s = _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, x, gen).view(b, 1, 1, 1)
    return (gray + (x - gray) * s).clamp_(0.0, 1.0)


def random_blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Blur a random share `blur_p` of the images (one sigma per batch)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    pick = _uniform(x.shape[0], 0.0, 1.0, x, gen) < cfg.blur_p
    if not bool(pick.any()):
        return x
    sigma = float(_uniform(1, *cfg.blur_sigma, x, gen))
    kernel = 2 * math.ceil(2 * sigma) + 1
    out = x.clone()
    out[pick] = gaussian_blur(x[pick], [kernel, kernel], [sigma, sigma])
    return out


def augment(
    x: torch.Tensor, size: int, cfg: AugmentConfig = AugmentConfig(), gen: torch.Generator | None = None
) -> torch.Tensor:
    """Crop, jitter and blur a batch (B, 3, H, W) in 0..1 into (B, 3, size, size) in 0..1."""
    return random_blur(color_jitter(random_resized_crop(x, size, cfg, gen), cfg, gen), cfg, gen)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with (3,) mean and std, on (B, 3, H, W)."""
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each image and target distribution with the batch's mirror image: lam ~ Beta(alpha, alpha).

    Returns:
        (mixed images, mixed targets (B, K), lam).
    """
    if alpha <= 0 or x.shape[0] < 2:
        return x, targets, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1 - lam)  # the original image stays dominant
    return lam * x + (1 - lam) * x.flip(0), lam * targets + (1 - lam) * targets.flip(0), lam


def _uniform(n: int, low: float, high: float, like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return (
        torch.rand(n, generator=gen, device=gen.device if gen is not None else like.device).to(like.device)
        * (high - low)
        + low
    )
