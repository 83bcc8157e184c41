"""Labelling speed in video-hours per hour: decoding only what sampling needs, on every core.

Four generated H.264 clips (720p and 1080p, a keyframe every 1 s and every 2 s, 25 fps; FFmpeg's `testsrc2`
encoded with imageio-ffmpeg's libx264 at camera-like bitrates), all figures in video seconds per wall second:

- decode ceiling: `ffmpeg -threads 0 -an -i CLIP -f null -` over the same files (every frame, every core)
- today: OpenCV grabbing every frame and converting the sampled ones (how `distill` sampled before)
- `distill sample --fps 1` with 1 and N workers; `--fps 0.2` on the 1 s-keyframe clips against today's;
  `--keyframes`
- `distill label --fps 1` with the annotations teacher (N workers), `--fps 2` and `--keyframes` with the tiny
  random PaliGemma of the tests, and `--keyframes` with a slower random PaliGemma (224 px input, 4 layers of width
  128; on two cores decoding cannot outpace the tiny one): the teacher's busy share of the labelling loop's wall
  time (from the moment the teacher is loaded; the decode workers start while it loads), and the frames/s each
  side could sustain alone (the teacher's from its own time, decoding's from the workers' time), which says
  whether decoding outpaces it
- `distill label --fps 1 --engine ray` with the annotations teacher: N decode tasks and one teacher actor, as
  many processes as the local engine's row, run right after it, on Ray started on this machine at the first Ray
  row and kept running (a cluster `ray start` started: its start, and a first short run that creates Ray Data's
  per-cluster actors and Ray's worker processes, are not timed, like loading a model; no dashboard; skipped
  when Ray is not installed: `pip install 'distill[ray]'`)

Goals: exact --fps 1 with N workers >= 0.85 x the ceiling; --fps 0.2 >= 3x today's; --keyframes >= 10x exact
--fps 1 (also printed against today's --fps 1: on clips whose keyframes fall on the 1 s sample times, exact
sampling now decodes those keyframes only, the very frames --keyframes decodes); the PaliGemma teacher busy >= 90%
of the wall time on the rows where decoding outpaces it; the Ray engine >= 0.8x the local engine's video seconds
per second (its overhead). Prints a table, writes bench/results/label.json.

    python bench/label.py [--seconds 30] [--workers N] [--repeats 2] [--decode-device cuda] [--only annotations]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # clip and tiny-teacher builders live with the test fixtures

from _h264 import ffmpeg_exe, make_h264  # noqa: E402

from distill.config import load_config  # noqa: E402

# run_sample and run_label are imported where they are used: decode workers are spawned processes, which import
# this script again as their main module, and should pay for what `distill`'s own entry point costs, no more.

RAY_ROW = "label --fps 1, annotations, --engine ray, {n} decode tasks"
CLIPS = {  # name: (size, keyframe interval s, bitrate)
    "720p-gop1s": ((1280, 720), 1.0, "3M"),
    "720p-gop2s": ((1280, 720), 2.0, "3M"),
    "1080p-gop1s": ((1920, 1080), 1.0, "5M"),
    "1080p-gop2s": ((1920, 1080), 2.0, "5M"),
}


def make_clips(folder: Path, seconds: float) -> dict[str, Path]:
    """The four clips, kept in `folder` between runs (encoding them takes longer than the bench)."""
    clips = {}
    for name, (size, gop_s, bitrate) in CLIPS.items():
        path = folder / f"{name}-{seconds:g}s.mp4"
        if not path.exists():
            make_h264(path.with_suffix(".tmp.mp4"), seconds, size=size, gop_s=gop_s, bitrate=bitrate)
            path.with_suffix(".tmp.mp4").rename(path)
        clips[name] = path
    return clips


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decode workers, ffmpeg): what the work cost, which
    other users of a shared machine change far less than the wall time."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ceiling(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-threads", "0", "-an", "-i", str(path)]
        subprocess.run([*command, "-f", "null", "-"], check=True)
    return time.perf_counter() - start


def today(paths: list[Path], fps: float) -> float:
    """The sampler `distill` had before: OpenCV grabs every frame, converts the one nearest each target."""
    start = time.perf_counter()
    for path in paths:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        half, target = 0.5 / cap.get(cv2.CAP_PROP_FPS), 0.0
        while cap.grab():
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if t + half >= target:
                while target <= t + half:
                    target += 1.0 / fps
                cap.retrieve()
        cap.release()
    return time.perf_counter() - start


def sample(paths: list[Path], out: Path, **sampling) -> tuple[float, dict]:
    from distill.sample import run_sample

    flags = {f"sampling.{k}": v for k, v in sampling.items()} | {"sampling.dedup": False}
    start = time.perf_counter()
    summary = run_sample(paths, out, load_config(overrides=flags))
    wall = time.perf_counter() - start
    return wall, {"decoded": summary.stats.frames_read, "kept": summary.stats.frames_kept}


def label(paths: list[Path], out: Path, teacher: dict, **sampling) -> tuple[float, dict]:
    from distill.label import run_label

    flags = {f"sampling.{k}": v for k, v in sampling.items()} | {"sampling.dedup": False} | teacher
    start = time.perf_counter()
    summary = run_label(paths, out, load_config(overrides=flags), overwrite=True)
    wall = time.perf_counter() - start
    stats = summary.stats
    steady = summary.teacher_s / max(summary.seconds - summary.first_batch_s, 1e-9)  # after start-up
    extra = {"teacher_busy": summary.teacher_busy, "teacher_busy_after_startup": min(steady, 1.0)}
    # frames/s each side could sustain alone: the teacher's from its own time, decoding's from the workers' time
    # (all workers at once); decoding outpaces the teacher where its rate is the higher
    extra |= {"teacher_fps": stats.frames_kept / max(summary.teacher_s, 1e-9)}
    extra |= {"decode_fps": stats.frames_kept * summary.workers / max(summary.decode_s, 1e-9)}
    return wall, extra | {"startup_s": summary.first_batch_s, "decoded": stats.frames_read, "kept": stats.frames_kept}


def label_ray(paths: list[Path], out: Path, teacher: dict, workers: int, **sampling) -> tuple[float, dict]:
    """`--engine ray` with `workers` decode tasks; Ray is started at the first call (one CPU more, for the teacher
    actor) and stopped when the bench ends."""
    import atexit

    import ray

    from distill.label import run_label_ray

    flags = {f"sampling.{k}": v for k, v in sampling.items()} | {"sampling.dedup": False} | teacher
    flags |= {"engine": "ray", "ray.decode_cpus": workers, "ray.teacher_actors": 1}
    if not ray.is_initialized():
        ray.init(num_cpus=workers + 1, include_dashboard=False, logging_level="WARNING")
        atexit.register(ray.shutdown)
        # a first short run over every clip creates Ray Data's per-cluster actors and as many worker processes as
        # the timed runs use (Ray starts them on demand, ~1 s each here): once per cluster, like starting it, so not
        # timed; warmed on one clip only, the first timed runs waited for a worker and were 20% slower
        run_label_ray(paths, out, load_config(overrides=flags | {"sampling.end_s": 2.0}), overwrite=True)
    start = time.perf_counter()
    summary = run_label_ray(paths, out, load_config(overrides=flags), overwrite=True)
    wall = time.perf_counter() - start
    stats = summary.stats
    return wall, {"teacher_busy": summary.teacher_busy, "decoded": stats.frames_read, "kept": stats.frames_kept}


def annotations(paths: list[Path], folder: Path, seconds: float) -> dict:
    csv = folder / "segments.csv"
    lines = [f"{p.name},0,{seconds / 2},a\n{p.name},{seconds / 2},{seconds + 1},b" for p in paths]
    csv.write_text("video,start_s,end_s,label\n" + "\n".join(lines) + "\n")
    return {"classes": "a,b", "teacher.backend": "annotations", "teacher.annotations": str(csv)}


def tiny_paligemma(folder: Path) -> dict:
    from _tiny_paligemma import tiny_paligemma_dir

    model = tiny_paligemma_dir(folder)
    return {
        "classes": "idle,running,stopped",
        "teacher.model": str(model),
        "teacher.local_files_only": True,
        "teacher.device": "cpu",
        "teacher.batch_size": 16,
    }


def small_paligemma(folder: Path) -> dict:
    """A random PaliGemma slower than the tests' (224 px input, 14 px patches: 256 image tokens; 4 layers of width
    128): on two cores decoding outpaces it, which the tiny one's 32 px never lets happen."""
    from _tiny_paligemma import build_tiny_paligemma

    model = build_tiny_paligemma(folder / "small-paligemma", image_size=224, patch_size=14, width=128, layers=4)
    return tiny_paligemma(folder) | {"teacher.model": str(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="length of each clip")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N (default: every core)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each row")
    parser.add_argument("--decode-device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", default="", help="run only the rows whose name holds one of these (comma-separated)")
    parser.add_argument("--clips", type=Path, default=Path(tempfile.gettempdir()) / "distill-bench-label")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "label.json")
    args = parser.parse_args()
    clips = make_clips(args.clips, args.seconds)
    paths = list(clips.values())
    gop1 = [p for n, p in clips.items() if "gop1s" in n]
    video_s = args.seconds * len(paths)
    n, dev = args.workers, args.decode_device
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ann, tiny, small = annotations(paths, tmp, args.seconds), tiny_paligemma(tmp), small_paligemma(tmp)
        rows = {  # name: (video seconds, function returning wall seconds [and extras])
            "decode ceiling (ffmpeg -threads 0, every frame)": (video_s, lambda: ceiling(paths)),
            "today: OpenCV, --fps 1": (video_s, lambda: today(paths, 1.0)),
            "sample --fps 1, workers 1": (video_s, lambda: sample(paths, tmp / "s", workers=1, decode_device=dev)),
            f"sample --fps 1, workers {n}": (video_s, lambda: sample(paths, tmp / "s", workers=n, decode_device=dev)),
            "today: OpenCV, --fps 0.2, 1 s keyframes": (video_s / 2, lambda: today(gop1, 0.2)),
            "sample --fps 0.2, 1 s keyframes, workers 1": (
                video_s / 2,
                lambda: sample(gop1, tmp / "s", fps=0.2, workers=1, decode_device=dev),
            ),
            f"sample --keyframes, workers {n}": (
                video_s,
                lambda: sample(paths, tmp / "s", keyframes=True, workers=n, decode_device=dev),
            ),
            f"sample --fps 1 --start 0.5 (between keyframes), workers {n}": (
                video_s - 0.5 * len(paths),
                lambda: sample(paths, tmp / "s", start_s=0.5, workers=n, decode_device=dev),
            ),
            f"label --fps 1, annotations, workers {n}": (
                video_s,
                lambda: label(paths, tmp / "l", ann, workers=n, decode_device=dev),
            ),
            f"label --fps 2, tiny PaliGemma, workers {n}": (
                video_s,
                lambda: label(paths, tmp / "l", tiny, fps=2, workers=n, decode_device=dev),
            ),
            f"label --keyframes, tiny PaliGemma, workers {n}": (
                video_s,
                lambda: label(paths, tmp / "l", tiny, keyframes=True, workers=n, decode_device=dev),
            ),
            f"label --keyframes, small PaliGemma (224 px), workers {n}": (
                video_s,
                lambda: label(paths, tmp / "l", small, keyframes=True, workers=n, decode_device=dev),
            ),
        }
        if importlib.util.find_spec("ray") is not None:  # right after the local engine's row: the same warm files
            ray_row = (video_s, lambda: label_ray(paths, tmp / "r", ann, n, decode_device=dev))
            local = f"label --fps 1, annotations, workers {n}"
            items = list(rows.items())
            at = list(rows).index(local) + 1
            rows = dict([*items[:at], (RAY_ROW.format(n=n), ray_row), *items[at:]])
        else:
            print("skipped the Ray row: Ray is not installed (pip install 'distill[ray]')")
        if args.only:
            rows = {k: v for k, v in rows.items() if any(part in k for part in args.only.split(","))}
        results: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every row alike
            for name, (seconds, fn) in rows.items():
                cpu = cpu_seconds()
                out = fn()
                cpu = cpu_seconds() - cpu
                wall, extra = out if isinstance(out, tuple) else (out, {})
                best = results.get(name)
                if best is None or wall < best["wall_s"]:
                    results[name] = {"video_s": seconds, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), **extra}
    report(results, args, n)


def _ratios(rate: dict[str, float], n: int, prefix: str = "", suffix: str = "") -> dict[str, float]:
    """The decode goals' ratios, between the rows present (the figures are video seconds per second)."""
    pairs = {  # ratio name: (row, row it is divided by)
        f"exact --fps 1, {n} workers / ceiling (>= 0.85)": (f"sample --fps 1, workers {n}", "decode ceiling"),
        "--fps 0.2 / today's --fps 0.2 (>= 3)": ("sample --fps 0.2", "today: OpenCV, --fps 0.2"),
        f"--keyframes / exact --fps 1, {n} workers (>= 10)": ("sample --keyframes", f"sample --fps 1, workers {n}"),
        "--keyframes / today's --fps 1 (what exact sampling cost before)": (
            "sample --keyframes",
            "today: OpenCV, --fps 1",
        ),
        "(--keyframes / exact --fps 1 --start 0.5, targets between keyframes)": (
            "sample --keyframes",
            "sample --fps 1 --start 0.5",
        ),
    }
    ratios = {}
    for name, (top, bottom) in pairs.items():
        a = next((v for k, v in rate.items() if k.startswith(top)), None)
        b = next((v for k, v in rate.items() if k.startswith(bottom)), None)
        if a is not None and b is not None:
            plain = re.sub(r" \(>= [\d.]+\)", "", name).strip("()")
            ratios[prefix + plain + suffix if prefix else name] = a / b
    return ratios


def _goals(results: dict[str, dict], rate: dict[str, float], n: int) -> dict[str, float]:
    goals = _ratios(rate, n)
    tiny = {k: r for k, r in results.items() if "PaliGemma" in k}
    outpaced = {k: r for k, r in tiny.items() if r["decode_fps"] > r["teacher_fps"]}
    for name, r in tiny.items():
        short = name.removeprefix("label ").split(", workers")[0]
        if name in outpaced:
            goals[f"teacher busy, {short}: decoding outpaces it (>= 0.90)"] = r["teacher_busy"]
            goals[f"(teacher busy, {short}, after start-up)"] = r["teacher_busy_after_startup"]
        else:
            goals[f"(teacher busy, {short}: decoding is slower, no goal)"] = r["teacher_busy"]
    ray, local = RAY_ROW.format(n=n), f"label --fps 1, annotations, workers {n}"
    if ray in rate and local in rate:
        goals["--engine ray / local, annotations (>= 0.8)"] = rate[ray] / rate[local]
    return goals


def report(results: dict[str, dict], args: argparse.Namespace, n: int) -> None:
    for r in results.values():
        r["video_s_per_s"] = round(r["video_s"] / r["wall_s"], 2)
        r["video_s_per_cpu_s"] = round(r["video_s"] / max(r["cpu_s"], 1e-9), 2)
    rate = {k: r["video_s_per_s"] for k, r in results.items()}
    goals = _goals(results, rate, n)
    per_cpu = {k: r["video_s_per_cpu_s"] for k, r in results.items()}
    goals |= _ratios(per_cpu, n, prefix="(per CPU s: ", suffix=")")  # what decoding costs, whatever else runs
    print(f"\n{'':62} {'video s':>8} {'wall s':>8} {'video h / h':>12} {'per CPU s':>9} {'decoded/kept':>13}")
    for name, r in results.items():
        frames = f"{r['decoded']}/{r['kept']}" if "decoded" in r else ""
        extra = f"  teacher busy {r['teacher_busy']:.0%}" if "teacher_busy" in r else ""
        if "startup_s" in r:
            extra += f" ({r['teacher_busy_after_startup']:.0%} after {r['startup_s']:.1f} s start-up)"
            extra += f"; frames/s: teacher {r['teacher_fps']:.0f}, decoding {r['decode_fps']:.0f}"
        line = f"{name:62} {r['video_s']:8.0f} {r['wall_s']:8.2f} {r['video_s_per_s']:12.1f}"
        print(f"{line} {r['video_s_per_cpu_s']:9.1f} {frames:>13}{extra}")
    print()
    for name, value in goals.items():
        print(f"{name:70} {value:6.2f}")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_1min": os.getloadavg()[0]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"rows": results, "goals": goals, "seconds": args.seconds, "workers": n, "machine": machine}
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.json} (1-min load average {machine['load_1min']:.1f} on {machine['cpus']} cores)")


if __name__ == "__main__":
    main()
