"""Teacher speed: the plain one-frame `generate` recipe ("seed recipe") against constrained, batched labelling.

- seed recipe: one frame at a time, `generate(max_new_tokens=10, do_sample=False)`, answer lower-cased and
  stripped to letters (`--mode generate --batch-size 1`). A random model never emits EOS, so it always runs all
  10 steps; a trained model answering one word stops after about 2, so the bench also times `max_new_tokens=2`
  ("seed, 2 tokens") as the seed recipe's best case, and reports the speed-up against both.
- constrained: one shared prefill per batch, then one forward of the class-text trie on the cached prefix
  (`distill.label` default), at several batch sizes.

CPU (default): the tiny random PaliGemma of the tests (goal: constrained batched >= 5x the seed recipe).
`--full-size` (CUDA only; skipped cleanly without it): the PaliGemma-3B-224 architecture (PaliGemmaConfig
defaults: SigLIP-So400m/14 at 224 px -> 256 image tokens, Gemma-2B) with random weights in bf16; reports
frames/s and MFU against ~1.39 TFLOP per frame (goal: >= 100x the seed recipe and >= 230 frames/s on an H100).
Frames are 224x224 RGB arrays, so preprocessing is the processor's normalisation only.

`--openai URL`: the `openai` teacher (a VLM behind an OpenAI-compatible server) at several concurrencies.
`--openai test` starts tests/_openai_server.py in another process, answering instantly: what the client side
(frame encoding, JSON, HTTP, parsing) sustains (goal: >= 500 frames/s). Against a real server (e.g. vLLM
serving the tiny colour PaliGemma of the tests, `--openai http://127.0.0.1:8000/v1 --model colour-pg`) it
measures that server.

    python bench/teacher.py [--batch-sizes 1,8,32,64] [--frames 256] [--seed-frames 32] [--repeats 3]
    python bench/teacher.py --full-size [--batch-sizes 1,16,64,128,256]
    python bench/teacher.py --openai test|URL [--model NAME] [--soft-labels none] [--concurrency 1,4,16,64]

Prints a table and writes bench/results/teacher.json (or teacher-full.json, teacher-openai.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny PaliGemma builder lives with the test fixtures

from _tiny_paligemma import build_tiny_paligemma, tiny_config, train_tokenizer  # noqa: E402

from distill.config import load_config  # noqa: E402
from distill.label._paligemma import PaliGemmaTeacher, load_paligemma  # noqa: E402

CLASSES = "idle,idle warning,running,stopped"
FLOP_PER_FRAME = 1.39e12  # PaliGemma-3B-224 prefill: ~256 image + ~20 text tokens through SigLIP + Gemma-2B
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def full_size_teacher(mode: str, max_new_tokens: int, device: str = "cuda", **shrink: int) -> PaliGemmaTeacher:
    """PaliGemma-3B-224 shapes with random bf16 weights on `device` (nothing downloaded).

    `shrink` overrides text/vision layer counts (`text_layers=1, vision_layers=1`), only to smoke-test this
    code path on a CPU.
    """
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    image_processor = SiglipImageProcessor(
        size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = 256
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=train_tokenizer())
    config = PaliGemmaConfig(image_token_index=processor.image_token_id)  # 3B-224 defaults otherwise
    if shrink:
        config.text_config.num_hidden_layers = shrink.get("text_layers", config.text_config.num_hidden_layers)
        config.vision_config.num_hidden_layers = shrink.get("vision_layers", config.vision_config.num_hidden_layers)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = PaliGemmaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.set_attn_implementation("sdpa")
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    cfg = load_config(overrides={"classes": CLASSES, "teacher.mode": mode, "teacher.max_new_tokens": max_new_tokens})
    return PaliGemmaTeacher(model.eval(), processor, cfg, torch.device(device))


def retarget(teacher: PaliGemmaTeacher, mode: str, max_new_tokens: int) -> PaliGemmaTeacher:
    """The same model and processor as another mode (no second copy of the weights)."""
    cfg = load_config(overrides={"classes": CLASSES, "teacher.mode": mode, "teacher.max_new_tokens": max_new_tokens})
    return PaliGemmaTeacher(teacher.model, teacher.processor, cfg, teacher.device)


def frames_per_s(teacher: PaliGemmaTeacher, images: list[np.ndarray], batch: int, cuda: bool, repeats: int) -> float:
    """Best of `repeats` timed passes over `images` in batches (after one warm-up batch)."""
    teacher.label_rgb(images[:batch])  # warm-up (allocations, kernels)
    best = 0.0
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(images) - batch + 1, batch):
            teacher.label_rgb(images[i : i + batch])
        if cuda:
            torch.cuda.synchronize()
        best = max(best, (len(images) // batch) * batch / (time.perf_counter() - start))
    return best


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, value in PEAK_BF16.items():  # "H100 PCIe" before "H100"
        if all(part in name for part in key.split()):
            return value
    return None


def openai_bench(args: argparse.Namespace) -> None:
    """frames/s of the openai teacher at each concurrency; see the module docstring."""
    import subprocess

    from distill.label import TeacherFailure, build_teacher
    from distill.video import Frame

    server = None
    url, model = args.openai, args.model
    if url == "test":
        cmd = [sys.executable, str(ROOT / "tests" / "_openai_server.py"), "--instant"]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        url, model = server.stdout.readline().strip(), "toy-vlm"
    rng = np.random.default_rng(0)
    n = args.frames or (2000 if server else 64)
    colours = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    frames = [Frame("bench.mp4", i, 0.0, np.repeat(np.repeat(colours[i], 48, 0), 64, 1)) for i in range(n)]
    rows = []
    try:
        for c in [int(x) for x in args.concurrency.split(",")]:
            flags = {"classes": args.classes, "teacher.backend": "openai", "teacher.url": url, "teacher.model": model}
            flags |= {"teacher.soft_labels": args.soft_labels, "teacher.concurrency": c}
            teacher = build_teacher(load_config(overrides=flags))
            teacher.label(frames[: min(n, 2 * c)])  # warm-up: connections, caches
            start = time.perf_counter()
            answers = teacher.label(frames)
            seconds = time.perf_counter() - start
            failed = sum(isinstance(a, TeacherFailure) for a in answers)
            method = teacher.describe()["stats"]["soft_labels"]
            rows.append(
                {"concurrency": c, "frames": n, "frames_per_s": n / seconds, "failed": failed, "method": method}
            )
            teacher.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    where = "the instant test server (client capacity)" if server else url
    print(f"openai teacher against {where}, classes {args.classes}, {rows[0]['method']} soft labels")
    print(f"{'concurrency':>11} {'frames':>7} {'frames/s':>10} {'ms/frame':>9} {'failed':>7}")
    for r in rows:
        ms = 1000 / r["frames_per_s"]
        print(f"{r['concurrency']:>11} {r['frames']:>7} {r['frames_per_s']:>10.1f} {ms:>9.2f} {r['failed']:>7}")
    out = args.json or ROOT / "bench" / "results" / "teacher-openai.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"server": "instant test server" if server else url, "model": model, "classes": args.classes.split(",")}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"-> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openai", default=None, help="`test` (an instant test server) or a server's API base URL")
    parser.add_argument("--model", default="colour-pg", help="--openai: the served model's name")
    parser.add_argument("--soft-labels", default="auto", help="--openai: auto | prompt-logprobs | first-token | none")
    parser.add_argument("--concurrency", default="1,4,16,64", help="--openai: concurrencies, comma-separated")
    parser.add_argument("--classes", default="red,green,blue,yellow", help="--openai: the classes")
    parser.add_argument("--full-size", action="store_true", help="PaliGemma-3B-224 shapes in bf16 on CUDA")
    parser.add_argument("--batch-sizes", default=None, help="constrained batch sizes, comma-separated")
    parser.add_argument("--frames", type=int, default=None, help="frames per constrained measurement")
    parser.add_argument("--seed-frames", type=int, default=None, help="frames for the seed recipe")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row; the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (tiny matmuls gain nothing from more)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak, if not detected")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.openai:
        openai_bench(args)
        return
    if args.full_size and not torch.cuda.is_available():
        print("skipped: --full-size needs a CUDA GPU (none visible); run without it for the CPU bench")
        return
    cuda = args.full_size
    sizes = [int(b) for b in (args.batch_sizes or ("1,16,64,128,256" if cuda else "1,8,32,64")).split(",")]
    n_frames = args.frames or (1024 if cuda else 256)
    n_seed = args.seed_frames or (32 if cuda else 32)
    torch.manual_seed(0)
    if cuda:
        constrained = full_size_teacher("constrained", 10)
        device = torch.cuda.get_device_name()
    else:
        torch.set_num_threads(args.threads)
        tmp = tempfile.TemporaryDirectory()
        model_dir = build_tiny_paligemma(Path(tmp.name) / "tiny")
        constrained = load_paligemma(tiny_config(model_dir, CLASSES, **{"teacher.device": "cpu"}))
        device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    side = 224 if cuda else 32
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(max(n_frames, max(sizes)))]
    rows = []
    for name, max_new in (("seed recipe (generate, 10 tokens)", 10), ("seed, 2 tokens (best case)", 2)):
        fps = frames_per_s(retarget(constrained, "generate", max_new), images[:n_seed], 1, cuda, args.repeats)
        rows.append({"recipe": name, "batch": 1, "frames_per_s": fps})
    for batch in sizes:
        fps = frames_per_s(constrained, images[: max(n_frames, batch)], batch, cuda, args.repeats)
        rows.append({"recipe": "constrained (prefill + trie)", "batch": batch, "frames_per_s": fps})
    seed, seed2 = rows[0]["frames_per_s"], rows[1]["frames_per_s"]
    peak = peak_flops(device, args.peak_tflops) if cuda else None
    for row in rows:
        row["x_seed"] = row["frames_per_s"] / seed
        row["x_seed_2_tokens"] = row["frames_per_s"] / seed2
        if peak:
            row["mfu"] = row["frames_per_s"] * FLOP_PER_FRAME / peak
    print(f"teacher speed on {device}: {'PaliGemma-3B-224 random bf16' if cuda else 'tiny random PaliGemma, fp32'}")
    print(
        f"{'recipe':36} {'batch':>5} {'frames/s':>10} {'ms/frame':>9} {'x seed':>8} {'x seed(2)':>9}"
        + ("  MFU" if peak else "")
    )
    for r in rows:
        line = f"{r['recipe']:36} {r['batch']:>5} {r['frames_per_s']:>10.1f} {1000 / r['frames_per_s']:>9.2f}"
        line += f" {r['x_seed']:>8.1f} {r['x_seed_2_tokens']:>9.1f}"
        print(line + (f"  {r['mfu']:.1%}" if peak else ""))
    best = max(r["frames_per_s"] for r in rows[2:])
    goal = "x100 and >= 230 frames/s" if cuda else "x5"
    print(f"best constrained: {best:.1f} frames/s = {best / seed:.1f}x the seed recipe (goal {goal})")
    out = args.json or ROOT / "bench" / "results" / ("teacher-full.json" if cuda else "teacher.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device, "full_size": cuda, "flop_per_frame": FLOP_PER_FRAME, "peak_flops": peak}
    out.write_text(json.dumps({**meta, "classes": CLASSES.split(","), "rows": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
