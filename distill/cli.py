"""The `distill` command line: parse flags, resolve the config, call one library function, print a summary.

Known errors (`DistillError`) become one line on stderr and exit code 1; `--debug` shows the traceback.
Heavy libraries are imported inside the commands, so `distill --help` is instant. The options, and how they
become config overrides, are declared once in `distill._cli_options`.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from distill._cli_options import (
    DEFAULT_STUDENT,
    AnnotationsOpt,
    ApiKeyEnvOpt,
    ChunkSecondsOpt,
    ClassesOpt,
    CompareTeacherOpt,
    ConcurrencyOpt,
    ConfigOpt,
    DecodeCpusOpt,
    DecodeDeviceOpt,
    DedupOpt,
    DeviceOpt,
    EmaAlphaOpt,
    EndOpt,
    EngineOpt,
    EpochsOpt,
    FpsOpt,
    HoldOpt,
    HttpOpt,
    HttpTokenOpt,
    HysteresisOpt,
    InputSizeOpt,
    JpegSizeOpt,
    KeyframesOpt,
    LabelTeacherOpt,
    LocalFilesOpt,
    MaxFramesOpt,
    MaxPerSecondOpt,
    MaxRpsOpt,
    ModelOpt,
    ModeOpt,
    PretrainedOpt,
    QuestionOpt,
    RayAddressOpt,
    ServeTeacherOpt,
    SmoothingOpt,
    SoftLabelsOpt,
    SoftOpt,
    StartOpt,
    StudentOpt,
    TeacherActorsOpt,
    TeacherBatchOpt,
    TeacherModelOpt,
    TeacherTimeoutOpt,
    TeacherUrlOpt,
    ThresholdOpt,
    TrainBatchOpt,
    TruthOpt,
    VideosArg,
    WindowOpt,
    WorkersOpt,
    overrides,
    task_config,
)
from distill.errors import ConfigError, DistillError

app = typer.Typer(
    name="distill",
    help="Turn hours of video into a fast frame classifier: a VLM teacher labels, a small student learns.\n\n"
    "Workflow: sample -> label -> review -> train -> serve -> compare.  Try `distill demo` first.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out_console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details (INFO level).")] = False,
) -> None:
    _state["debug"] = debug
    _setup_logging(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = {logging.WARNING: "warning: ", logging.ERROR: "error: "}.get(record.levelno, "")
        return prefix + record.getMessage()


def _setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger("distill")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def command(func: F) -> F:
    """Register a command whose `DistillError`s become one red line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DistillError as exc:
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    app.command()(wrapper)
    return func


# --- commands ------------------------------------------------------------------------------------------------


@command
def sample(
    videos: VideosArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for index.csv and the JPEGs.")] = Path("runs/sample"),
    config: ConfigOpt = None,
    fps: FpsOpt = None,
    dedup: DedupOpt = None,
    max_frames: MaxFramesOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    image_size: JpegSizeOpt = None,
    keyframes: KeyframesOpt = False,
    workers: WorkersOpt = None,
    chunk_seconds: ChunkSecondsOpt = None,
    decode_device: DecodeDeviceOpt = None,
) -> None:
    """Preview sampling: write the frames a labelling run would see (DIR/index.csv + JPEGs)."""
    from distill.sample import run_sample

    cfg = task_config(sample, locals())
    summary = run_sample(videos, out, cfg, show_progress=sys.stderr.isatty())
    s = summary.stats
    out_console.print(
        f"sampled [bold]{s.videos}[/] video(s): [bold]{s.frames_kept}[/] frames kept, "
        f"{s.duplicates} near-duplicates skipped, {len(summary.failures)} failed -> {out / 'index.csv'}",
        highlight=False,
    )
    out_console.print(
        f"{summary.video_s / 3600:.2f} video-hours in {summary.seconds:.1f} s: "
        f"{summary.video_hours_per_hour:.0f} video-hours per hour, {summary.workers} decode worker(s) "
        f"busy {summary.decode_s:.1f} s",
        highlight=False,
    )


@command
def serve(
    camera: Annotated[list[int] | None, typer.Option("--camera", help="Camera index (repeatable).")] = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", help="Video file or rtsp:// / http:// URL (repeatable).")
    ] = None,
    student: StudentOpt = DEFAULT_STUDENT,
    config: ConfigOpt = None,
    teacher: ServeTeacherOpt = None,
    question: QuestionOpt = None,
    teacher_model: TeacherModelOpt = None,
    teacher_url: TeacherUrlOpt = None,
    soft_labels: SoftLabelsOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    teacher_timeout: TeacherTimeoutOpt = None,
    annotations: AnnotationsOpt = None,
    threshold: ThresholdOpt = None,
    max_per_second: MaxPerSecondOpt = None,
    hold: HoldOpt = None,
    hard_examples: Annotated[
        Path, typer.Option("--hard-examples", help="Label set for frames the teacher labelled.")
    ] = Path("runs/hard-examples"),
    smoothing: SmoothingOpt = None,
    ema_alpha: EmaAlphaOpt = None,
    window: WindowOpt = None,
    hysteresis: HysteresisOpt = None,
    display: Annotated[bool, typer.Option("--display/--no-display", help="Show a window per source.")] = True,
    events: Annotated[str | None, typer.Option("--events", help="JSON-lines events file, `-` for stdout.")] = None,
    http: HttpOpt = None,
    http_token: HttpTokenOpt = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Stop after S seconds.")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Play files as fast as possible, every frame.")] = False,
    threads: Annotated[
        int, typer.Option("--threads", help="CPU threads of the student; 1 leaves the other cores to decoding.")
    ] = 1,
) -> None:
    """Classify live streams and files in real time; ask a teacher about unsure frames (`q` or Ctrl-C stops).

    The teacher asks the question and class texts the student recorded, unless --config or --question say otherwise.
    """
    from distill.realtime import run_serve  # first: distill.video quiets OpenCV's logging before cv2 loads

    # isort: split
    from distill.export import Student
    from distill.realtime.serve import build_fallback_teacher

    flags = overrides(serve, locals())
    cfg = task_config(serve, locals())
    sources = [str(c) for c in camera or []] + list(source or [])
    runtime = Student(student, threads=threads)
    fallback = None
    if "teacher.backend" in flags:  # --teacher or --annotations; only then: a PaliGemma teacher imports torch
        cfg, fallback = build_fallback_teacher(cfg, runtime.meta, sources, question=question)
    console = err_console if events == "-" else out_console
    summary = run_serve(
        sources,
        runtime,
        cfg,
        teacher=fallback,
        display=display,
        events=events,
        max_seconds=max_seconds,
        fast=fast,
        hard_examples=hard_examples,
        http_token=http_token,
        on_http=lambda url: console.print(f"web view on {url}", highlight=False, markup=False, soft_wrap=True),
    )
    for line in summary.lines():
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@command
def label(
    videos: VideosArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The label set folder.")] = Path("runs/labels"),
    config: ConfigOpt = None,
    classes: ClassesOpt = None,
    question: QuestionOpt = None,
    fps: FpsOpt = None,
    dedup: DedupOpt = None,
    max_frames: MaxFramesOpt = None,
    keyframes: KeyframesOpt = False,
    workers: WorkersOpt = None,
    chunk_seconds: ChunkSecondsOpt = None,
    decode_device: DecodeDeviceOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    teacher_actors: TeacherActorsOpt = None,
    decode_cpus: DecodeCpusOpt = None,
    teacher: LabelTeacherOpt = None,
    teacher_model: TeacherModelOpt = None,
    annotations: AnnotationsOpt = None,
    mode: ModeOpt = None,
    batch_size: TeacherBatchOpt = None,
    device: DeviceOpt = None,
    local_files_only: LocalFilesOpt = False,
    teacher_url: TeacherUrlOpt = None,
    soft_labels: SoftLabelsOpt = None,
    concurrency: ConcurrencyOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    max_rps: MaxRpsOpt = None,
    teacher_timeout: TeacherTimeoutOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start afresh if OUT holds labels from other classes or teacher.")
    ] = False,
    shard_rows: Annotated[
        int,
        typer.Option("--shard-rows", min=1, help="Frames per Parquet shard; a killed run redoes at most this many."),
    ] = 512,
    preview: Annotated[
        int | None,
        typer.Option(
            "--preview",
            min=1,
            help="Try the question first: label N frames spread over the videos, write no label set, "
            "show them on a review page (OUT-preview/review.html).",
        ),
    ] = None,
) -> None:
    """Label sampled frames with a teacher (PaliGemma, an OpenAI-compatible server, or an annotations CSV); a rerun
    resumes where it stopped."""
    from distill.label import run_label

    cfg = task_config(label, locals())
    if preview is not None:
        _label_preview(videos, out, cfg, preview)
        return
    s = run_label(videos, out, cfg, overwrite=overwrite, show_progress=sys.stderr.isatty(), shard_rows=shard_rows)
    per_class = ", ".join(f"{name} {s.per_class.get(name, 0)}" for name in cfg.class_names)
    lines = [
        f"labelled [bold]{s.frames_labelled}[/] frames in {s.seconds:.1f} s ({s.frames_per_s:.1f} frames/s) -> {out}",
        f"label set: {s.total_frames} frames; {per_class}; unmatched {s.unmatched}",
        f"{s.video_s / 3600:.2f} video-hours at {s.video_hours_per_hour:.0f} video-hours per hour; teacher busy "
        f"{s.teacher_busy:.0%} of the time, {s.workers} decode worker(s) busy {s.decode_s:.1f} s: {s.bottleneck}",
    ]
    if cfg.engine == "ray":
        lines.append(s.engine_line())
    if s.frames_already_done or s.videos_already_done:
        lines.append(f"resumed: {s.frames_already_done} frames and {s.videos_already_done} videos already done")
    if s.skipped_uncovered:
        lines.append(f"skipped {s.skipped_uncovered} frames no annotation segment covers")
    if s.failures:
        lines.append(f"{len(s.failures)} video(s) failed: " + "; ".join(f"{f.name}: {f.reason}" for f in s.failures))
    if s.frames_failed:
        named = "; ".join(f"{v} frame {i}: {why}" for v, i, why in s.frames_failed[:3])
        lines.append(f"{len(s.frames_failed)} frame(s) the teacher failed, not stored ({named}); rerun to label them")
    for line in lines:
        out_console.print(line, highlight=False, soft_wrap=True)


def _label_preview(videos: list[str], out: Path, cfg: Any, n: int) -> None:
    """`distill label --preview N`: the teacher on N frames, shown on a review page beside OUT (OUT untouched)."""
    from distill.evaluate.review import frames_from_table, review_frames
    from distill.label.preview import run_preview

    p = run_preview(videos, cfg, n)
    page_dir = out.parent / f"{out.name}-preview"
    frames = frames_from_table(p.table, p.classes)
    report = review_frames(frames, page_dir, source=", ".join(videos), title="distill label --preview")
    per_class = ", ".join(f"{name} {k}" for name, k in report.summary["per_class"].items())
    lines = [
        f"previewed {len(frames)} frames in {p.calls} teacher call(s), {p.seconds:.1f} s: {per_class}; "
        f"unmatched {report.summary['unmatched']}" + (f"; no answer for {p.skipped}" if p.skipped else ""),
        f"no label set written; look at {report.files['review.html']}",
    ]
    if p.failures:
        lines.append(f"{len(p.failures)} not previewed: " + "; ".join(p.failures[:3]))
    for line in lines:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)


@command
def review(
    labels: Annotated[Path, typer.Argument(help="The label set to review.")] = Path("runs/labels"),
    student: Annotated[
        Path | None,
        typer.Option("--student", help="An exported student: cleanlab ranks suspects on its features."),
    ] = None,
    truth: TruthOpt = None,
    apply: Annotated[
        Path | None,
        typer.Option(
            "--apply", help="A review.csv with `corrected` filled in: store those labels in LABELS (use alone)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for review.html and review.csv.")] = Path(
        "runs/review"
    ),
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many suspects in review.csv.")] = 200,
) -> None:
    """Look at the teacher's labels: per-class frames, timelines, ranked suspects; --apply stores corrections."""
    from distill.evaluate.review import apply_review, run_review

    if apply is not None:
        given = [flag for flag, value in (("--student", student), ("--truth", truth)) if value is not None]
        if given:
            raise ConfigError(f"--apply stores corrections only; run {', '.join(given)} without --apply")
        counts = apply_review(labels, apply)
        out_console.print(
            f"applied {counts['corrections']} correction(s) to {labels}: {counts['changed']} new or changed, "
            f"{counts['unchanged']} already stored; `distill train` and `compare` now use them",
            highlight=False,
            soft_wrap=True,
        )
        return
    report = run_review(
        labels, out, student_path=student, truth_csv=truth, limit=limit, show_progress=sys.stderr.isatty()
    )
    _print_review(report)


def _print_review(report: Any) -> None:
    s = report.summary
    per_class = ", ".join(f"{name} {n}" for name, n in s["per_class"].items())
    how = "cleanlab on the student's features" if s["method"] == "cleanlab" else "confidence and flicker"
    lines = [
        f"{s['frames']} frames from {s['videos']} video(s): {per_class}; unmatched {s['unmatched']}; "
        f"corrected {s['corrected']}",
        f"{s['suspects']} suspects ranked by {how}",
    ]
    truth = s.get("truth")
    if truth:
        worst = min(truth["per_class"].items(), key=lambda kv: 2.0 if kv[1]["teacher"] is None else kv[1]["teacher"])
        lines.append(
            f"teacher vs truth on {truth['frames']} frames: accuracy {truth['teacher']:.3f}; "
            f"lowest {worst[0]} {worst[1]['teacher']:.3f}"
        )
    lines.append(
        f"review: {report.files['review.html']} (fill in `corrected` in {report.files['review.csv']}, "
        "then `distill review LABELS --apply` it)"
    )
    for line in lines:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)


@command
def export(
    ckpt: Annotated[
        Path, typer.Argument(help="Student checkpoint, or the training run folder holding student.ckpt.")
    ] = Path("runs/student"),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The fp32 ONNX file \\[default: student.onnx by the checkpoint].")
    ] = None,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Also write NAME.int8.onnx: static INT8 (QDQ) calibrated on real frames, sensitive nodes kept "
            "float until it agrees with fp32; prints fp32 vs INT8 frames/s.",
        ),
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write NAME.fp16.onnx, for GPU providers.")] = False,
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", help="Label set to calibrate INT8 on \\[default: the checkpoint's label set]."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Keep INT8/FP16 files that agree with fp32 on fewer than 98% of frames.")
    ] = False,
) -> None:
    """Export a trained student to ONNX (metadata inside), checked for parity with PyTorch; optional INT8/FP16."""
    from distill.export import export_onnx
    from distill.export.onnx_export import find_checkpoint

    path = find_checkpoint(ckpt)
    report = export_onnx(
        path,
        out or path.parent / "student.onnx",
        int8=int8,
        fp16=fp16,
        calibration=calibration,
        force=force,
        show_progress=sys.stderr.isatty(),
    )
    for line in report.lines():
        out_console.print(line, highlight=False, soft_wrap=True)


@command
def train(
    labels: Annotated[Path, typer.Argument(help="The label set `distill label` wrote.")] = Path("runs/labels"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the checkpoint, figures, student.onnx.")] = Path(
        "runs/student"
    ),
    config: ConfigOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    image_size: InputSizeOpt = None,
    batch_size: TrainBatchOpt = None,
    soft: SoftOpt = None,
    pretrained: PretrainedOpt = None,
    extra: Annotated[
        list[Path] | None, typer.Option("--extra", help="More label sets (e.g. hard examples), training only.")
    ] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue from a checkpoint (last.ckpt).")] = None,
    accelerator: Annotated[str, typer.Option("--accelerator", help="auto | cpu | gpu | ... (Lightning).")] = "auto",
    devices: Annotated[str, typer.Option("--devices", help="auto, a count, or ids like 0,1 (Lightning).")] = "auto",
    precision: Annotated[
        str | None, typer.Option("--precision", help="32-true | 16-mixed | bf16-mixed (default: bf16 on GPU).")
    ] = None,
) -> None:
    """Train a student (timm) on a label set, then export it: the best checkpoint, metrics.json and student.onnx."""
    from distill.train import run_train

    cfg = task_config(train, locals())
    dev: str | int = int(devices) if devices.isdigit() else devices
    s = run_train(
        labels, out, cfg, extra=extra or (), accelerator=accelerator, devices=dev, precision=precision,
        resume=resume, show_progress=sys.stderr.isatty(), report=_print_train_report,
    )  # fmt: skip
    m = s.metrics
    if not m:  # a DDP rank other than 0
        return
    from distill.export import export_onnx  # torch.onnx and onnxscript load only once training succeeded

    onnx = export_onnx(s.checkpoint, out / "student.onnx", show_progress=sys.stderr.isatty()).path
    lines = [
        f"trained [bold]{s.model}[/] for {s.epochs} epochs ({'soft' if s.soft else 'hard'} targets"
        f"{', class-balanced' if s.balanced else ''}) in {s.seconds:.0f} s; best epoch {s.best_epoch}",
        f"val ({m['frames']} frames): agreement with the teacher [bold]{m['agreement']:.3f}[/], "
        f"accuracy vs its labels {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}",
        f"-> {s.checkpoint}, {onnx}, {out / 'metrics.json'}",
    ]
    for line in lines:
        out_console.print(line, highlight=False, soft_wrap=True)


def _print_train_report(kind: str, data: dict[str, Any]) -> None:
    """Print the label audit and the split counts as `distill train` learns them."""
    if kind == "audit":
        per_class = ", ".join(f"{name} {n}" for name, n in data["classes"].items())
        f, lc = data["flicker"], data["low_confidence"]
        low = f"{lc['share']:.1%}" if lc["share"] is not None else "n/a"
        out_console.print(
            f"labels: {data['labelled']} frames ({per_class}); unmatched {data['unmatched']}; "
            f"flicker {f['share']:.1%} of {f['pairs']} close pairs; confidence < {lc['threshold']}: {low}",
            highlight=False,
            soft_wrap=True,
        )
        for warning in data["warnings"]:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    elif kind == "splits":
        c = data["counts"]
        extra = f" (+{c['train']['extra_frames']} from --extra)" if c["train"]["extra_frames"] else ""
        out_console.print(
            f"split {data['mode']}: train {c['train']['frames']} frames{extra} / {c['train']['videos']} videos, "
            f"val {c['val']['frames']} frames / {c['val']['videos']} videos",
            highlight=False,
            soft_wrap=True,
        )


# --- compare and demo ----------------------------------------------------------------------------------------


def _print_compare(report: Any) -> None:
    """The comparison summary: a table (student vs teacher), the headline sentences, where the report is."""
    from rich.table import Table

    from distill.evaluate.report import headline, summary_rows

    m = report.metrics
    title = f"student vs teacher on {m['frames']} frames of {len(m['videos'])} video(s)"
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("student", justify="right")
    table.add_column("teacher", justify="right")
    for row in summary_rows(m):
        table.add_row(*row)
    out_console.print(table)
    for line in headline(m):
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)
    skipped = {k: v for k, v in (m.get("frames_skipped") or {}).items() if v}
    if skipped:
        out_console.print(f"frames left out: {skipped}", highlight=False, markup=False)
    out_console.print(
        f"report: {report.files['report.html']} (also report.md, metrics.json and the PNG plots in {report.out_dir})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@command
def compare(
    labels: Annotated[
        Path, typer.Argument(help="Label set to compare on: its held-out videos, or every frame with --all.")
    ] = Path("runs/labels"),
    student: StudentOpt = DEFAULT_STUDENT,
    truth: TruthOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for report.html, report.md, metrics.json, plots.")
    ] = Path("runs/report"),
    all_frames: Annotated[
        bool, typer.Option("--all", help="Every frame of LABELS (a label set of other videos), not only held-out ones.")
    ] = False,
    teacher: CompareTeacherOpt = None,
    teacher_model: TeacherModelOpt = None,
    annotations: AnnotationsOpt = None,
    batch_size: TeacherBatchOpt = None,
    device: DeviceOpt = None,
    teacher_url: TeacherUrlOpt = None,
    soft_labels: SoftLabelsOpt = None,
    concurrency: ConcurrencyOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    config: ConfigOpt = None,
    target: Annotated[
        float,
        typer.Option("--target-agreement", min=0.0, max=1.0, help="Agreement the recommended threshold must reach."),
    ] = 0.98,
) -> None:
    """Student vs teacher (and ground truth): accuracy, agreement, calibration, speed, fallback threshold; a report."""
    from distill.evaluate import run_compare

    teacher_cfg = None
    if "teacher.backend" in overrides(compare, locals()):  # --teacher or --annotations: the teacher runs here
        saved = labels / "config.yaml"  # without --config, its config starts from the label set's
        teacher_cfg = task_config(compare, locals(), config or (saved if saved.is_file() else None)).require_classes()
    report = run_compare(
        labels,
        out,
        student_path=student,
        truth_csv=truth,
        teacher_cfg=teacher_cfg,
        held_out_only=not all_frames,
        target_agreement=target,
        show_progress=sys.stderr.isatty(),
    )
    _print_compare(report)


@command
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo makes.")] = Path("runs/demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="A smaller scenario and student (about a minute; for CI).")
    ] = False,
) -> None:
    """The whole path on generated videos, on a CPU in minutes: render, label, train, export, compare, serve."""
    from distill.demo.pipeline import paligemma_command, run_demo

    def stage(name: str, detail: str) -> None:
        out_console.print(f"[bold green]done[/] {name:<8} {detail}", highlight=False, soft_wrap=True)
        if name == "label":
            out_console.print(
                "         [yellow]note:[/] the demo's teacher is the annotations teacher (a CSV standing in for a "
                "vision-language model), so it runs offline in minutes. A real run labels with PaliGemma:\n"
                f"         {paligemma_command(out / 'videos', out)}",
                highlight=False,
                soft_wrap=True,
            )

    out_console.print(f"distill demo{' --quick' if quick else ''}: rendering machine-state videos into {out} ...")
    r = run_demo(out, quick=quick, show_progress=sys.stderr.isatty(), on_stage=stage)
    _print_compare(r.compare)
    s = r.serve
    out_console.print(
        f"served {r.served_video.name} (held out) headless for {s.duration_s:.1f} s: {s.frames_classified} frames, "
        f"{s.inference_fps:.0f} frames/s -> {r.events}",
        highlight=False,
        soft_wrap=True,
    )
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items())
    where = [
        ("videos + ground truth", f"{r.scenario.video_dir}/ ({r.scenario.truth_csv.name})"),
        ("task config", str(r.config)),
        ("label set", str(r.labels)),
        ("student", f"{r.onnx} (checkpoint, metrics and splits in {r.student_dir})"),
        ("report", str(r.report_dir / "report.html")),
        ("events", str(r.events)),
    ]
    out_console.print(f"\n[bold]where everything is[/] ({timing}):")
    for name, path in where:
        out_console.print(f"  {name:<22} {path}", highlight=False, soft_wrap=True)
    held_out = r.served_video
    nxt = [
        f"distill serve --source {held_out} --student {r.onnx}",
        f"distill compare {r.labels} --student {r.onnx} --truth {r.scenario.truth_csv} --out {r.report_dir}",
        f"distill label YOUR_VIDEOS/ --config {r.config} --teacher paligemma --out runs/labels",
        "distill train runs/labels --out runs/student",
    ]
    out_console.print("[bold]next[/]: watch it live, compare again, then do the same on your own videos:")
    for line in nxt:
        out_console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


_WORKFLOW = ("demo", "sample", "label", "review", "train", "export", "serve", "compare")
app.registered_commands.sort(
    key=lambda c: _WORKFLOW.index(c.callback.__name__) if c.callback.__name__ in _WORKFLOW else len(_WORKFLOW)
)  # `distill --help` lists the commands in the order a user runs them


def main() -> None:
    """Console-script entry point."""
    app(prog_name="distill")


if __name__ == "__main__":
    main()
