"""The LightningModule: a timm model trained on the teacher's distributions (or hard labels).

Batches arrive as cached uint8 frames (see `distill.train.cache`); `on_after_batch_transfer` turns them into
normalised float tensors on the device, with augmentation while training. The loss is the cross-entropy
against the teacher's distribution, both softened by a temperature T (scaled by T^2, as in Hinton et al.'s
distillation), which for one-hot targets is the ordinary cross-entropy. Validation logs `val_agreement`: the
share of frames where the student's top class is the teacher's, which picks the best checkpoint.

This module does not read label sets or write outputs other than the checkpoint meta.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L  # noqa: N812
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from distill.train.augment import AugmentConfig, augment, mixup, normalize, to_float
from distill.train.meta import CHECKPOINT_KEY, StudentMeta


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of `logits` (B, K) against distributions `targets` (B, K), softened by `temperature`.

    Equals KL(targets_T || softmax(logits / T)) * T^2 plus the targets' entropy, which has no gradient.
    """
    if temperature != 1.0:
        targets = F.softmax(torch.log(targets.clamp_min(1e-8)) / temperature, dim=1)
    log_q = F.log_softmax(logits.float() / temperature, dim=1)  # (B, K)
    return -(targets * log_q).sum(dim=1).mean() * temperature**2


class StudentModule(L.LightningModule):
    """A timm classifier plus the loss, augmentation and schedule of a distillation run.

    Args:
        model: the timm model (logits (B, K)).
        meta: the student's `StudentMeta` (classes, preprocessing, split, ...), saved in every checkpoint.
        soft: train on distributions (with `temperature` and `mixup`); otherwise on the hard labels.
        mixup_alpha: Beta(alpha, alpha) mixing of images and targets; 0 turns it off.
        lr, weight_decay, warmup_epochs: AdamW with linear warmup then cosine decay, per step.
    """

    def __init__(
        self,
        model: nn.Module,
        meta: StudentMeta,
        *,
        soft: bool = True,
        temperature: float = 1.0,
        mixup_alpha: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        augment_cfg: AugmentConfig | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.meta = meta
        self.soft = soft
        self.temperature = temperature if soft else 1.0
        self.mixup_alpha = mixup_alpha if soft else 0.0
        self.lr, self.weight_decay, self.warmup_epochs = lr, weight_decay, warmup_epochs
        self.augment_cfg = augment_cfg or AugmentConfig()
        self.image_size = meta.image_size
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, *rest = batch
        x = to_float(images)  # (B, 3, S', S) in 0..1
        if self._trainer is not None and self._trainer.training:  # (no trainer: inference, no augmentation)
            x = augment(x, self.image_size, self.augment_cfg)
        elif x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (normalize(x, self.mean, self.std), *rest)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, targets, labels, _ = batch
        if not self.soft:
            targets = F.one_hot(labels, targets.shape[1]).float()
        x, targets, _ = mixup(x, targets, self.mixup_alpha)
        loss = soft_cross_entropy(self(x), targets, self.temperature)
        self.log("train_loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets, labels, top = batch
        logits = self(x)
        pred = logits.argmax(dim=1)
        n = x.shape[0]
        self.log("val_loss", soft_cross_entropy(logits, targets), batch_size=n, sync_dist=True)
        self.log("val_agreement", (pred == top).float().mean(), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_accuracy", (pred == labels).float().mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = max(1, int(self.warmup_epochs * per_epoch))

        def factor(step: int) -> float:  # linear warmup, then cosine to 1% of lr (clamped: resuming may run longer)
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.meta.to_dict()
