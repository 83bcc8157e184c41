"""Serving capacity: N concurrent 720p 25 fps file sources at native rate, and the cost of a slow teacher.

For each N it reports whether every source is captured and classified at full rate (>= 95% of 25 fps) and the
capture-to-label latency (p50/p95), then the largest N held with p95 < 50 ms (goal >= 4). Then it runs the
same sources with a teacher that sleeps 1 s per frame (asked about every frame: threshold 1.0) against no
teacher and reports the inference-fps ratio (goal >= 0.95), at native rate and with `--fast` (every frame,
as fast as the machine goes), plus the ratio of this process's CPU time per classified frame, which other
processes' load disturbs far less than fps. Ratios are medians of interleaved pairs measured in the same run.

With `--http-clients N` it measures the web view instead: the same sources (`--http-sources`, default 4) served
with `--http` and N MJPEG clients (in a process of their own, as browsers would be; client 0 sends its request
and then reads nothing) against serving with no web view, at native rate and with `--fast` (1 source, as fast
as the machine goes): the inference-fps ratio (goal >= 0.9), p95 capture-to-label latency with the clients
(goal < 50 ms at native rate) and the frames per second the slowest reading client got. Writes
bench/results/serve-http.json.

The student is mobilenetv3_small_100 (random weights: speed does not depend on them) exported through
`distill.export.export_onnx`, unless `--student` names an exported `student.onnx`. Prints a table and
writes bench/results/serve.json.

    python bench/serve.py [--sources 1,2,4,6,8] [--seconds 8] [--student runs/student/student.onnx]
    python bench/serve.py --http-clients 20 [--http-sources 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from distill.config import load_config
from distill.export import Student
from distill.realtime import run_serve
from distill.video import encode_jpeg, resize_short_side, write_video

CLASSES = ["idle", "running", "error"]
FPS = 25.0
# MJPEG clients: one thread each, reading as fast as frames come and counting bytes and frames; client 0 sends
# its request with a tiny receive buffer and then reads nothing at all. Prints [[bytes, frames], ...] at the end.
CLIENTS = r"""
import json, socket, sys, threading
host, port, n, sources = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
got = [[0, 0] for _ in range(n)]
def read(i):
    s = socket.socket()
    if i == 0:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, port))
    s.sendall(f"GET /stream/{i % sources}.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    if i == 0:
        threading.Event().wait()
    while chunk := s.recv(1 << 16):
        got[i][0] += len(chunk)
        got[i][1] += chunk.count(b"--frame")
threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(n)]
for t in threads:
    t.start()
for t in threads[1:]:
    t.join()
print(json.dumps(got))
"""


def render(seconds: float, width: int, height: int):
    """A camera-like 720p scene (texture + noise) with a moving box, so every frame decodes as a real one."""
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8), (width, height))
    noise = [rng.integers(-4, 5, (height, width, 3), dtype=np.int16) for _ in range(6)]
    for i in range(round(seconds * FPS)):
        frame = np.clip(base + noise[i % len(noise)], 0, 255).astype(np.uint8)
        x = (i * 9) % (width - 120)
        cv2.rectangle(frame, (x, height // 3), (x + 120, height // 3 + 120), (0, 255, 255), -1)
        yield frame


def export_student(work: Path, clip: Path) -> Path:
    """mobilenetv3_small_100 with random weights, saved as a student checkpoint and exported with export_onnx."""
    import torch

    from distill.config import SamplingConfig
    from distill.dataset import LabelSetWriter
    from distill.export import export_onnx
    from distill.train import build_meta, create_student, save_student

    torch.set_num_threads(2)
    labels = work / "labels"
    cap = cv2.VideoCapture(str(clip))
    with LabelSetWriter(labels, CLASSES, {"backend": "bench"}) as writer:  # frames for the export parity check
        for i in range(24):
            ok, frame = cap.read()
            if not ok:
                break
            probs = [0.0] * len(CLASSES)
            probs[i % len(CLASSES)] = 1.0
            writer.add(
                {
                    "video": f"v{i % 4}.mp4",
                    "frame_index": i,
                    "timestamp_s": i / FPS,
                    "label": CLASSES[i % 3],
                    "image": encode_jpeg(resize_short_side(frame, 320)),
                    "probs": probs,
                    "confidence": 1.0,
                    "teacher": "bench",
                    "raw": None,
                }  # fmt: skip
            )
    cap.release()
    meta = build_meta(
        CLASSES, "mobilenetv3_small_100", 224, label_set={"path": str(labels), "frames": 24},
        source_short_side=SamplingConfig().image_size,  # as `distill train` records it: 720p is area-shrunk
    )  # fmt: skip
    ckpt = save_student(create_student(meta), meta, work / "student.ckpt")
    export_onnx(ckpt, work / "student.onnx")
    return work / "student.onnx"


class SleepTeacher:
    """A teacher that takes `sleep_s` seconds per call (a stand-in for a VLM on another device)."""

    def __init__(self, sleep_s: float = 1.0) -> None:
        self.classes = tuple(CLASSES)
        self.input_size = None
        self.sleep_s = sleep_s
        self.calls = 0

    def describe(self) -> dict:
        return {"backend": "bench", "model": f"sleep-{self.sleep_s}s", "mode": "fixed", "prompt": None}

    def label(self, images: list[np.ndarray]) -> list:
        from distill.label import TeacherAnswer

        time.sleep(self.sleep_s)
        self.calls += 1
        return [TeacherAnswer(CLASSES[0], np.array([1.0, 0.0, 0.0], np.float32), None) for _ in images]


def serve_once(
    clip: Path, n: int, student: Student, seconds: float, *, teacher=None, fast=False, http_clients: int = 0
) -> dict:
    overrides = {"serve.fallback_threshold": 1.0, "serve.fallback_max_per_second": 10.0} if teacher else {}
    clients: list[subprocess.Popen] = []

    def start_clients(url: str) -> None:
        parts = urlsplit(url)
        args = [parts.hostname, str(parts.port), str(http_clients), str(n)]
        clients.append(subprocess.Popen([sys.executable, "-c", CLIENTS, *args], stdout=subprocess.PIPE, text=True))

    web = {"http": "127.0.0.1:0", "on_http": start_clients} if http_clients else {}
    cpu = time.process_time()  # all threads of this process: robust to other processes' load, unlike fps
    summary = run_serve(
        [clip] * n, student, load_config(overrides=overrides), teacher=teacher, max_seconds=seconds, fast=fast,
        hard_examples=None, **web,
    )  # fmt: skip
    cpu = time.process_time() - cpu
    got = json.loads(clients[0].communicate(timeout=30)[0]) if clients else []
    per_source_fps = [s.frames_classified / summary.duration_s for s in summary.sources]
    capture_fps = [s.frames_captured / summary.duration_s for s in summary.sources]
    return {
        "sources": n,
        "fast": fast,
        "teacher": teacher is not None,
        "duration_s": summary.duration_s,
        "inference_fps": summary.inference_fps,
        "min_source_fps": round(min(per_source_fps), 2),
        "min_capture_fps": round(min(capture_fps), 2),
        "dropped": sum(s.frames_dropped for s in summary.sources),
        "p50_ms": summary.latency_p50_ms,
        "p95_ms": summary.latency_p95_ms,
        "teacher_calls": summary.fallbacks_asked,
        "cpu_ms_per_frame": round(1000 * cpu / max(summary.frames_classified, 1), 2),
        "held": min(per_source_fps) >= 0.95 * FPS and min(capture_fps) >= 0.95 * FPS,
        "http_clients": http_clients,
        "min_client_fps": round(min(f for _, f in got[1:]) / summary.duration_s, 1) if got else None,
        "stalled_client_bytes": got[0][0] if got else None,
        "shutdown_s": summary.shutdown_s,
    }


def http_ratios(clip: Path, n: int, student: Student, seconds: float, repeats: int, clients: int, rows: list) -> dict:
    """Median inference-fps ratio, `clients` MJPEG clients against no web view, over interleaved pairs: `n`
    sources at native rate, and 1 source with `--fast`; plus the worst p95 latency with the clients."""
    out = {}
    for fast, sources in ((False, n), (True, 1)):
        fps, p95, p95_ratio, shutdown = [], [], [], []
        for _ in range(repeats):
            base = serve_once(clip, sources, student, seconds, fast=fast)
            watched = serve_once(clip, sources, student, seconds, fast=fast, http_clients=clients)
            rows += [base, watched]
            fps.append(watched["inference_fps"] / base["inference_fps"])
            p95.append(watched["p95_ms"])
            p95_ratio.append(watched["p95_ms"] / base["p95_ms"])
            shutdown.append(watched["shutdown_s"])
        mode = "fast" if fast else "native"
        out[mode] = {"sources": sources, "fps_ratio": round(float(np.median(fps)), 3), "max_p95_ms": max(p95),
                     "p95_ratio": round(float(np.median(p95_ratio)), 3), "max_shutdown_s": max(shutdown)}  # fmt: skip
    return out


def teacher_ratios(clip: Path, n: int, student: Student, seconds: float, repeats: int, rows: list) -> dict:
    """Median inference-fps ratio, 1 s/frame teacher against none, over interleaved pairs (native and fast)."""
    ratios = {}
    for fast in (False, True):
        fps, cpu = [], []
        for _ in range(repeats):
            base = serve_once(clip, n, student, seconds, fast=fast)
            slow = serve_once(clip, n, student, seconds, teacher=SleepTeacher(1.0), fast=fast)
            rows += [base, slow]
            fps.append(slow["inference_fps"] / base["inference_fps"])
            cpu.append(slow["cpu_ms_per_frame"] / base["cpu_ms_per_frame"])
        mode = "fast" if fast else "native"
        ratios[mode] = round(float(np.median(fps)), 3)
        ratios[f"{mode}_cpu_per_frame"] = round(float(np.median(cpu)), 3)
    return ratios


def print_table(rows: list[dict]) -> None:
    print(f"{'sources':>7} {'mode':>6} {'teacher':>7} {'infer fps':>9} {'min src fps':>11} {'min cap fps':>11}"
          f" {'dropped':>7} {'p50 ms':>7} {'p95 ms':>7} {'calls':>5} {'cpu ms/f':>8} {'held':>5}"
          f" {'clients':>7} {'client fps':>10}")  # fmt: skip
    for r in rows:
        mode, teacher, held = (
            "fast" if r["fast"] else "native",
            "1 s" if r["teacher"] else "-",
            "yes" if r["held"] else "no",
        )
        print(
            f"{r['sources']:>7} {mode:>6} {teacher:>7} {r['inference_fps']:>9.1f} {r['min_source_fps']:>11.1f} "
            f"{r['min_capture_fps']:>11.1f} {r['dropped']:>7} {r['p50_ms'] or 0:>7.1f} {r['p95_ms'] or 0:>7.1f} "
            f"{r['teacher_calls']:>5} {r['cpu_ms_per_frame']:>8.2f} {held:>5} {r['http_clients']:>7} "
            f"{r['min_client_fps'] if r['min_client_fps'] is not None else '-':>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default="1,2,4,6,8", help="comma-separated numbers of concurrent sources")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each serving run")
    parser.add_argument("--student", type=Path, help="an exported student.onnx (default: export one)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (0: ORT's default)")
    parser.add_argument("--repeats", type=int, default=3, help="teacher / no-teacher pairs per mode")
    parser.add_argument("--http-clients", type=int, default=0, help="measure the web view with N MJPEG clients")
    parser.add_argument("--http-sources", type=int, default=4, help="sources served to the MJPEG clients")
    parser.add_argument("--json", type=Path, help="default: bench/results/serve.json (serve-http.json with clients)")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    args.json = args.json or results / ("serve-http.json" if args.http_clients else "serve.json")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = write_video(work / "720p.mp4", render(args.seconds + 4, 1280, 720), FPS)
        student_path = args.student or export_student(work, clip)
        student = Student(student_path, threads=args.threads or None)
        student.predict([np.zeros((720, 1280, 3), np.uint8)] * 4)  # warm-up
        if args.http_clients:
            rows: list[dict] = []
            web = http_ratios(clip, args.http_sources, student, args.seconds, args.repeats, args.http_clients, rows)
            return report_http(args, student, rows, web)
        rows = [serve_once(clip, int(n), student, args.seconds) for n in args.sources.split(",")]
        held = [r["sources"] for r in rows if r["held"] and r["p95_ms"] is not None and r["p95_ms"] < 50]
        n_ratio = max(held) if held else 1
        ratios = teacher_ratios(clip, n_ratio, student, args.seconds, args.repeats, rows)

    name = str(args.student) if args.student else "mobilenetv3_small_100 (random weights) via export_onnx"
    threads = args.threads or "ORT default"
    print(f"\nstudent: {name}, {student.providers}, {threads} thread(s), {os.cpu_count()} CPU cores, "
          f"load avg {os.getloadavg()[0]:.1f}")  # fmt: skip
    print_table(rows)
    print(f"\nlargest N held at 25 fps with p95 < 50 ms: {max(held) if held else 0} (goal >= 4)")
    print(f"inference fps with a 1 s/frame teacher / without, N={n_ratio}, median of {args.repeats}: "
          f"native {ratios['native']}, fast {ratios['fast']} (goal >= 0.95); CPU per frame with / without: "
          f"native {ratios['native_cpu_per_frame']}, fast {ratios['fast_cpu_per_frame']}")  # fmt: skip
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "student": name,
        "providers": student.providers,
        "threads": args.threads or None,
        "seconds": args.seconds,
        "rows": rows,
        "largest_n_held": max(held) if held else 0,
        "teacher_ratio_n": n_ratio,
        "teacher_fps_ratio": ratios,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"-> {args.json}")


def report_http(args: argparse.Namespace, student: Student, rows: list[dict], web: dict) -> None:
    name = str(args.student) if args.student else "mobilenetv3_small_100 (random weights) via export_onnx"
    print(f"\nstudent: {name}, {student.providers}, {os.cpu_count()} CPU cores, load avg {os.getloadavg()[0]:.1f}")
    print_table(rows)
    native, fast = web["native"], web["fast"]
    shutdown = max(native["max_shutdown_s"], fast["max_shutdown_s"])
    print(f"\ninference fps with {args.http_clients} MJPEG clients (one reading nothing) / with no web view, median "
          f"of {args.repeats}: native {native['sources']} sources {native['fps_ratio']}, fast 1 source "
          f"{fast['fps_ratio']} (goal >= 0.9)")  # fmt: skip
    print(f"p95 capture-to-label latency with the clients, {native['sources']} sources: worst {native['max_p95_ms']} "
          f"ms (goal < 50), with / without: median {native['p95_ratio']}; slowest shutdown {shutdown} s")  # fmt: skip
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "student": name,
        "seconds": args.seconds,
        "http_clients": args.http_clients,
        "rows": rows,
        "web": web,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
