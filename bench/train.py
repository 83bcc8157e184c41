"""Training throughput: the full `distill train` pipeline against model-only steps on tensors in memory.

- pipeline: a label set on disk (Parquet shards of 320x240 JPEGs), decoded once into the uint8 cache (timed
  on its own row), then the DataLoader, batch augmentation and mixup on the device, the soft-target loss and
  AdamW, driven by a Lightning Trainer exactly as `run_train` builds them (validation left out of the timing).
- model only: the same model, loss and optimizer on normalised float batches already on the device.
- ratio = pipeline images/s / model-only images/s (goal >= 0.9). Every pipeline step is followed at once by one
  model-only step, so both are measured in the same second of a shared machine; the table gives the ratio of
  the totals and the median of the per-step ratios.
- augmentation alone: our batched augmentation against per-sample torchvision v2 transforms, images/s.

Prints a table and writes bench/results/train.json.

    python bench/train.py [--models mobilenetv3_small_100:224,test_convnext:64] [--frames 512]
                          [--batch-size 32] [--epochs 3] [--device cpu|cuda] [--threads N] [--workers N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import lightning as L  # noqa: N812
import numpy as np
import torch

from distill.dataset import LabelSetWriter
from distill.train import build_meta
from distill.train._models import create_timm
from distill.train.augment import AugmentConfig, augment, mixup, to_float
from distill.train.data import load_rows, make_splits
from distill.train.module import StudentModule, soft_cross_entropy
from distill.train.run import CACHE_MARGIN, make_loaders
from distill.video import encode_jpeg

CLASSES = ["idle", "running", "error", "maintenance"]
LAMPS = [(90, 90, 90), (40, 200, 40), (40, 40, 220), (220, 120, 30)]


def write_set(directory: Path, frames: int, videos: int = 4, size=(240, 320)) -> Path:
    """A label set of camera-like frames (texture, noise, a status lamp) with soft teacher labels."""
    rng = np.random.default_rng(0)
    h, w = size
    with LabelSetWriter(directory, CLASSES, {"backend": "bench"}, shard_rows=256, overwrite=True) as writer:
        for i in range(frames):
            video, cls = i % videos, (i // 16) % len(CLASSES)
            base = cv2.resize(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8), (w, h))
            img = np.clip(base.astype(np.int16) + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
            cv2.circle(img, (w - 40, 40), 25, LAMPS[cls], -1)
            probs = np.full(len(CLASSES), 0.1 / 3, np.float32)
            probs[cls] = 0.9
            writer.add({"video": f"v{video}.mp4", "frame_index": i, "timestamp_s": float(i), "image": encode_jpeg(img),
                        "label": CLASSES[cls], "probs": probs.tolist(), "confidence": 0.9, "teacher": "bench",
                        "raw": None})  # fmt: skip
    return directory


class ModelOnly:
    """Training steps of a copy of the model on normalised float batches already on the device."""

    def __init__(self, model: torch.nn.Module, size: int, args) -> None:
        self.device = torch.device(args.device)
        self.model = copy.deepcopy(model).to(self.device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.x = torch.randn(args.batch_size, 3, size, size, device=self.device)
        self.targets = torch.softmax(torch.randn(args.batch_size, len(CLASSES), device=self.device), 1)
        self.bf16 = args.device == "cuda" and "bf16" in args.precision

    def step(self) -> None:
        with torch.autocast("cuda", torch.bfloat16, enabled=self.bf16):
            loss = soft_cross_entropy(self.model(self.x), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def rate(self, steps: int) -> float:
        """Images/s over `steps` steps."""
        _sync(self.device.type)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device.type)
        return steps * len(self.x) / (time.perf_counter() - start)


class _Interleaved(L.Callback):
    """After every pipeline training step, one model-only step: both are timed in the same second of a shared
    machine. A pipeline step is the time from the end of the previous model-only step to the end of this batch
    (data loading, transfer, augmentation, mixup, forward, backward, optimizer, Lightning's bookkeeping)."""

    def __init__(self, model_only: ModelOnly, warmup_steps: int) -> None:
        self.model_only = model_only
        self.warmup_steps = warmup_steps
        self.pipeline: list[float] = []  # seconds per step
        self.only: list[float] = []
        self.images = 0
        self._mark = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        _sync(self.model_only.device.type)
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        _sync(self.model_only.device.type)
        now = time.perf_counter()
        step_s = now - self._mark
        only_s = len(self.model_only.x) / self.model_only.rate(1)
        if trainer.global_step > self.warmup_steps:
            self.pipeline.append(step_s)
            self.only.append(only_s)
            self.images += batch[0].shape[0]
        self._mark = time.perf_counter()


def measure(labels: Path, model_name: str, size: int, args) -> dict:
    rows = load_rows(labels)
    split, _ = make_splits(rows, 0.2, 0)
    start = time.perf_counter()
    train_loader, val_loader, _ = make_loaders(
        rows, split, size, args.batch_size, None, num_workers=args.workers, pin=args.device == "cuda"
    )
    cache_s = time.perf_counter() - start
    frames = len(train_loader.dataset) + len(val_loader.dataset)
    model = create_timm(model_name, len(CLASSES), size)
    module = StudentModule(model, build_meta(CLASSES, model_name, size), soft=True, mixup_alpha=0.2)
    timer = _Interleaved(ModelOnly(model, size, args), warmup_steps=3)
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
        precision=args.precision, callbacks=[timer], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_loader)
    ratios = [o / p for p, o in zip(timer.pipeline, timer.only)]
    pipeline_rate = timer.images / sum(timer.pipeline)
    only_rate = len(timer.only) * args.batch_size / sum(timer.only)
    return {
        "steps": len(ratios),
        "pipeline_images_per_s": round(pipeline_rate, 1),
        "model_only_images_per_s": round(only_rate, 1),
        "ratio": round(pipeline_rate / only_rate, 3),
        "ratio_median_step": round(float(np.median(ratios)), 3),
        "cache_decode_frames_per_s": round(frames / cache_s, 1),
    }


def augmentation_only(size: int, args, repeats: int = 5) -> tuple[float, float]:
    """(batched images/s, per-sample torchvision v2 images/s) for crop + jitter + blur."""
    from torchvision.transforms import v2

    device = torch.device(args.device)
    big = round(size * CACHE_MARGIN)
    images = torch.randint(0, 255, (args.batch_size, big, big, 3), dtype=torch.uint8)
    per_sample = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.18), antialias=True),
        v2.ColorJitter(0.25, 0.25, 0.25),
        v2.RandomApply([v2.GaussianBlur(5, (0.3, 1.2))], p=0.2),
        v2.ToDtype(torch.float32, scale=True),
    ])  # fmt: skip

    def batched() -> None:
        x = to_float(images.to(device))
        mixup(augment(x, size, AugmentConfig()), torch.ones(len(x), 4, device=device), 0.2)

    def sample_wise() -> None:
        torch.stack([per_sample(img.permute(2, 0, 1)) for img in images])

    rates = []
    for fn in (batched, sample_wise):
        fn()
        _sync(args.device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(args.device)
        rates.append(repeats * args.batch_size / (time.perf_counter() - start))
    return rates[0], rates[1]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenetv3_small_100:224,test_convnext:64")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="the first 3 steps are warm-up, not timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on <= 2 cores)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: as run_train)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "train.json")
    args = parser.parse_args()
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(args.threads or (1 if cores <= 2 else min(cores, 8)))
    L.seed_everything(0, verbose=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        labels = write_set(Path(tmp) / "labels", args.frames)
        for spec in args.models.split(","):
            name, size = spec.split(":")[0], int(spec.split(":")[1])
            result = measure(labels, name, size, args)
            aug_batched, aug_sample = augmentation_only(size, args)
            rows.append({"model": name, "image_size": size, "device": args.device, "precision": args.precision,
                         **result, "aug_batched_images_per_s": round(aug_batched, 1),
                         "aug_per_sample_tv2_images_per_s": round(aug_sample, 1)})  # fmt: skip
    head = ["model", "size", "device", "steps", "pipeline img/s", "model-only img/s", "ratio", "ratio median step",
            "decode f/s", "aug batched img/s", "aug per-sample tv2 img/s"]  # fmt: skip
    print(f"threads {torch.get_num_threads()}, batch {args.batch_size}, {args.frames} frames (320x240 JPEG)")
    print(" | ".join(head))
    for r in rows:
        print(f"{r['model']} | {r['image_size']} | {r['device']} | {r['steps']} | {r['pipeline_images_per_s']} | "
              f"{r['model_only_images_per_s']} | {r['ratio']} | {r['ratio_median_step']} | "
              f"{r['cache_decode_frames_per_s']} | {r['aug_batched_images_per_s']} | "
              f"{r['aug_per_sample_tv2_images_per_s']}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.json.write_text(json.dumps({"config": config | {"threads": torch.get_num_threads()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
