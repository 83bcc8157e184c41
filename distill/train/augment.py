"""Batch augmentation for fixed cameras, on the training device, plus mixup of images and distributions.

Fixed cameras see the same scene from the same place, so augmentation stays mild: a random-resized crop
covering most of the frame with a near-square aspect (the frame is squashed, and lamps at the edges must stay
in view), brightness / contrast / saturation jitter (lighting changes through the day), and an occasional
Gaussian blur (focus, compression). No flips: left and right mean something on a machine panel.

Every image of a batch gets its own crop and jitter, but the work is done for the whole batch at once
(torchvision's `roi_align` for the crops, one fused affine colour map, a separable blur), so it
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
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in 0..1, contiguous (NCHW)."""
    return images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def random_resized_crop(
    x: torch.Tensor, size: int, cfg: AugmentConfig, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image random crops of `x` (B, 3, H, W), resampled (bilinear) to (B, 3, size, size) in one call."""
    from torchvision.ops import roi_align

    b, _, height, width = x.shape
    area = _uniform(b, *cfg.scale, x, gen)
    ratio = torch.exp(_uniform(b, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), x, gen))
    w = torch.sqrt(area * ratio).clamp(max=1.0) * width  # crop size in pixels
    h = torch.sqrt(area / ratio).clamp(max=1.0) * height
    x0 = _uniform(b, 0.0, 1.0, x, gen) * (width - w)
    y0 = _uniform(b, 0.0, 1.0, x, gen) * (height - h)
    index = torch.arange(b, device=x.device, dtype=x.dtype)
    boxes = torch.stack([index, x0, y0, x0 + w, y0 + h], dim=1)  # (B, 5): image, x1, y1, x2, y2
    return roi_align(x, boxes, (size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors on (B, 3, H, W) in 0..1, in place.

    Brightness b, then contrast c about the mean grey level m, then saturation s about the grey image g
    compose into one affine map per image: x' = s*c*b * x + (1-s)*c*b * g + (1-c)*b*m.
    """
    b = x.shape[0]
    bright = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, x, gen).view(b, 1, 1, 1)
    c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, x, gen).view(b, 1, 1, 1)
    s = _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, x, gen).view(b, 1, 1, 1)
    gray = torch.einsum("bchw,c->bhw", x, _GRAY.to(x.device, x.dtype)).unsqueeze(1)  # (B, 1, H, W)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    shift = torch.addcmul((1 - c) * bright * mean, gray, (1 - s) * c * bright)  # (B, 1, H, W)
    return x.mul_(s * c * bright).add_(shift).clamp_(0.0, 1.0)  # in place: x is the crop's fresh output


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect padding: weighted sums of shifted slices (fast on CPU)."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    weights = (k / k.sum()).tolist()
    h, w = x.shape[-2:]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = sum(wt * x[..., :, i : i + w] for i, wt in enumerate(weights))  # (B, C, H + 2r, W)
    return sum(wt * rows[..., i : i + h, :] for i, wt in enumerate(weights))


def random_blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Blur a random share `blur_p` of the images in place (one sigma per batch)."""
    pick = torch.nonzero(_uniform(x.shape[0], 0.0, 1.0, x, gen) < cfg.blur_p).flatten()
    if len(pick) == 0:
        return x
    sigma = float(_uniform(1, *cfg.blur_sigma, x, gen))
    x[pick] = gaussian_blur(x[pick], sigma)
    return x


def augment(
    x: torch.Tensor, size: int, cfg: AugmentConfig = AugmentConfig(), gen: torch.Generator | None = None
) -> torch.Tensor:
    """Crop, jitter and blur a batch (B, 3, H, W) in 0..1 into (B, 3, size, size) in 0..1."""
    return random_blur(color_jitter(random_resized_crop(x, size, cfg, gen), cfg, gen), cfg, gen)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with (3,) mean and std, on (B, 3, H, W), in place."""
    return x.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each image (in place) and target distribution with the batch's mirror image: lam ~ Beta(alpha, alpha).

    Returns:
        (mixed images, mixed targets (B, K), lam).
    """
    if alpha <= 0 or x.shape[0] < 2:
        return x, targets, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1 - lam)  # the original image stays dominant
    mirrored = x.flip(0)  # a copy, so x can be mixed in place
    return x.mul_(lam).add_(mirrored, alpha=1 - lam), lam * targets + (1 - lam) * targets.flip(0), lam


_GRAY = torch.tensor([0.299, 0.587, 0.114])


def _uniform(n: int, low: float, high: float, like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return (
        torch.rand(n, generator=gen, device=gen.device if gen is not None else like.device).to(like.device)
        * (high - low)
        + low
    )
