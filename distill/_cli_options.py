"""The command line's options, each declared once, and the one helper that turns them into config overrides.

An option that sets a config field carries a `Key` next to its `typer.Option`; `overrides(command, values)`
reads those keys off the command's signature, so no command builds a dotted-key dict by hand. Help texts
take their defaults from the config dataclasses (`TrainConfig().epochs`, ...), never from a copied number.

```python
@command
def train(config: ConfigOpt = None, epochs: EpochsOpt = None) -> None:
    cfg = task_config(train, locals())  # defaults < --config < the flags given
```

A flag name means one thing in every command: `--student` is an exported `student.onnx`, `--model` a timm
name, `--annotations` a segments CSV that also selects the annotations teacher when `--teacher` is not given.

This module does not parse anything itself (Typer does) and imports no stage, so `distill --help` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.markup import escape

from distill.config import (
    SamplingConfig,
    ServeConfig,
    StudentConfig,
    TaskConfig,
    TeacherConfig,
    TrainConfig,
    load_config,
)

# The registered teacher backends (`distill.label.teacher_backends()`, which a test keeps this equal to);
# importing distill.label here would slow every `distill --help` down.
TEACHERS = ("annotations", "openai", "paligemma")
DEFAULT_STUDENT = Path("runs/student/student.onnx")

_SAMPLING, _TEACHER, _STUDENT = SamplingConfig(), TeacherConfig(), StudentConfig()
_TRAIN, _SERVE = TrainConfig(), ServeConfig()


@dataclass(frozen=True)
class Key:
    """Marks an option whose value overrides the config field `dotted` (after `convert`, if given)."""

    dotted: str
    convert: Callable[[Any], Any] | None = None


def default(value: Any) -> str:
    """` [default: value]` for a help text (escaped for rich markup); booleans read on / off."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return escape(f" [default: {value}]")


def overrides(command: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted config overrides of one invocation of `command`: every `Key` option the user set.

    Options left unset (None) override nothing. `--annotations` without `--teacher` selects the annotations
    teacher, the same in every command that has both.

    Args:
        command: the command function (its signature's `Key` metadata names the fields).
        values: its argument values by parameter name (`locals()` at the top of the command).
    """
    found: dict[str, Any] = {}
    for name, hint in get_type_hints(command, include_extras=True).items():
        key = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Key)), None)
        value = values.get(name)
        if key is not None and value is not None:
            value = key.convert(value) if key.convert else value
            if value is not None:
                found[key.dotted] = value
    if "teacher.annotations" in found:
        found.setdefault("teacher.backend", "annotations")
    return found


def task_config(command: Callable[..., Any], values: Mapping[str, Any], config: Path | None = None) -> TaskConfig:
    """Resolve defaults < the YAML file (`config`, else the command's `--config`) < the options the user set."""
    return load_config(config or values.get("config"), overrides(command, values))


def _only_if_set(flag: bool) -> bool | None:
    return True if flag else None  # an off switch leaves the config file's value alone


def teacher_opt(role: str, shown_default: str | None = None) -> Any:
    """The `--teacher` option of a command; `role` says what that command does with the teacher it names."""
    names = " | ".join(TEACHERS)
    tail = default(shown_default) if shown_default else ""
    return Annotated[
        str | None,
        typer.Option("--teacher", help=f"{role}: {names}; --annotations alone implies annotations{tail}."),
        Key("teacher.backend"),
    ]


# --- options shared by several commands ---------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Task YAML (classes, question, sampling, ...); flags override it.")
]
VideosArg = Annotated[
    list[str], typer.Argument(help="Video files, folders (searched recursively) or globs.", show_default=False)
]
LabelTeacherOpt = teacher_opt("Teacher backend", _TEACHER.backend)
ServeTeacherOpt = teacher_opt("Ask this teacher about unsure frames")
CompareTeacherOpt = teacher_opt("Run this teacher here (its answers and speed)")
ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Comma-separated class names, e.g. idle,running (instead of the config's)."),
    Key("classes"),
]
QuestionOpt = Annotated[
    str | None,
    typer.Option("--question", help="The teacher's question; `{choices}` becomes the class texts."),
    Key("question"),
]
TeacherModelOpt = Annotated[
    str | None,
    typer.Option("--teacher-model", help="Teacher model: hub id or local folder" + default(_TEACHER.model) + "."),
    Key("teacher.model"),
]
AnnotationsOpt = Annotated[
    Path | None,
    typer.Option(
        "--annotations", help="Segments CSV video,start_s,end_s,label for the annotations teacher (implies it)."
    ),
    Key("teacher.annotations", str),
]
TeacherBatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="Frames per teacher call" + default(_TEACHER.batch_size) + "."),
    Key("teacher.batch_size"),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="Teacher device: auto | cpu | cuda | cuda:N" + default(_TEACHER.device) + "."),
    Key("teacher.device"),
]
TeacherUrlOpt = Annotated[
    str | None,
    typer.Option("--teacher-url", help="openai teacher: the server's API base, e.g. http://127.0.0.1:8000/v1."),
    Key("teacher.url"),
]
SoftLabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--soft-labels",
        help="openai teacher: auto | prompt-logprobs | first-token | none" + default(_TEACHER.soft_labels) + ".",
    ),
    Key("teacher.soft_labels"),
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option("--concurrency", help="openai teacher: requests in flight" + default(_TEACHER.concurrency) + "."),
    Key("teacher.concurrency"),
]
ApiKeyEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key-env",
        help="openai teacher: the environment variable holding the API key" + default(_TEACHER.api_key_env) + ".",
    ),
    Key("teacher.api_key_env"),
]
MaxRpsOpt = Annotated[
    float | None,
    typer.Option("--max-rps", help="openai teacher: at most this many requests started a second."),
    Key("teacher.max_rps"),
]
TeacherTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--teacher-timeout", help="openai teacher: seconds per request attempt" + default(_TEACHER.timeout_s) + "."
    ),
    Key("teacher.timeout_s"),
]
StudentOpt = Annotated[Path, typer.Option("--student", help="The exported student (.onnx).")]
TruthOpt = Annotated[Path | None, typer.Option("--truth", help="Ground-truth segments CSV video,start_s,end_s,label.")]
FpsOpt = Annotated[
    float | None,
    typer.Option("--fps", help="Frames sampled per second of video time" + default(_SAMPLING.fps) + "."),
    Key("sampling.fps"),
]
DedupOpt = Annotated[
    bool | None,
    typer.Option(
        "--dedup/--no-dedup", help="Skip frames nearly identical to the last kept one" + default(_SAMPLING.dedup) + "."
    ),
    Key("sampling.dedup"),
]
MaxFramesOpt = Annotated[
    int | None,
    typer.Option("--max-frames", help="At most this many frames per video."),
    Key("sampling.max_frames_per_video"),
]
KeyframesOpt = Annotated[
    bool,
    typer.Option(
        "--keyframes", help="Keyframes only, at most --fps per second: the fast mode for slow-changing scenes."
    ),
    Key("sampling.keyframes", _only_if_set),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Decode processes" + escape(" [default: cores - 1, at least 1].")),
    Key("sampling.workers"),
]
ChunkSecondsOpt = Annotated[
    float | None,
    typer.Option(
        "--chunk-seconds",
        help="Long videos are decoded in chunks of this much video time, in parallel; dedup works within one"
        + default(_SAMPLING.chunk_s)
        + ".",
    ),
    Key("sampling.chunk_s"),
]
DecodeDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--decode-device", help="cpu | cuda (the GPU's video decoders, NVDEC)" + default(_SAMPLING.decode_device) + "."
    ),
    Key("sampling.decode_device"),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="local (this machine's processes) | ray (a Ray cluster, or Ray started here)"
        + default(TaskConfig().engine)
        + ".",
    ),
    Key("engine"),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="--engine ray: the cluster, auto (the one `ray start` runs here) or ray://HOST:10001"
        + escape(" [default: start Ray on this machine]."),
    ),
    Key("ray.address"),
]
TeacherActorsOpt = Annotated[
    int | None,
    typer.Option(
        "--teacher-actors",
        min=1,
        help="--engine ray: teacher replicas" + escape(" [default: one per GPU of the cluster, else 1]."),
    ),
    Key("ray.teacher_actors"),
]
DecodeCpusOpt = Annotated[
    int | None,
    typer.Option(
        "--decode-cpus",
        min=1,
        help="--engine ray: decode tasks at once, one CPU each" + escape(" [default: every CPU the teacher leaves]."),
    ),
    Key("ray.decode_cpus"),
]

# --- options of one command, with the field they set --------------------------------------------------------

StartOpt = Annotated[
    float | None, typer.Option("--start", help="Skip the first S seconds of every video."), Key("sampling.start_s")
]
EndOpt = Annotated[
    float | None, typer.Option("--end", help="Stop at S seconds into every video."), Key("sampling.end_s")
]
JpegSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        help="Short side of saved JPEGs in pixels, 0 = original" + default(_SAMPLING.image_size) + ".",
    ),
    Key("sampling.image_size"),
]
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="constrained | generate" + default(_TEACHER.mode) + "."),
    Key("teacher.mode"),
]
LocalFilesOpt = Annotated[
    bool,
    typer.Option("--local-files-only", help="Never contact the Hugging Face Hub (offline)."),
    Key("teacher.local_files_only", _only_if_set),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="The student: any timm model name" + default(_STUDENT.model) + "."),
    Key("student.model"),
]
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", help="Training epochs" + default(_TRAIN.epochs) + "."), Key("train.epochs")
]
InputSizeOpt = Annotated[
    int | None,
    typer.Option("--image-size", help="Square input size of the student" + default(_STUDENT.image_size) + "."),
    Key("student.image_size"),
]
TrainBatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="Frames per training step" + default(_TRAIN.batch_size) + "."),
    Key("train.batch_size"),
]
SoftOpt = Annotated[
    bool | None,
    typer.Option(
        "--soft/--hard",
        help="Learn the teacher's distributions, or only its labels" + default("soft" if _TRAIN.soft else "hard") + ".",
    ),
    Key("train.soft"),
]
PretrainedOpt = Annotated[
    bool | None,
    typer.Option(
        "--pretrained/--no-pretrained", help="Start from timm's pretrained weights" + default(_STUDENT.pretrained) + "."
    ),
    Key("student.pretrained"),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--fallback-threshold",
        help="Ask the teacher below this smoothed confidence, 0 = never" + default(_SERVE.fallback_threshold) + ".",
    ),
    Key("serve.fallback_threshold"),
]
MaxPerSecondOpt = Annotated[
    float | None,
    typer.Option(
        "--fallback-max-per-second",
        help="At most this many teacher calls a second" + default(_SERVE.fallback_max_per_second) + ".",
    ),
    Key("serve.fallback_max_per_second"),
]
HoldOpt = Annotated[
    float | None,
    typer.Option("--teacher-hold", help="Seconds a teacher answer is shown" + default(_SERVE.teacher_hold_s) + "."),
    Key("serve.teacher_hold_s"),
]
SmoothingOpt = Annotated[
    str | None,
    typer.Option("--smoothing", help="ema | vote" + default(_SERVE.smoothing) + "."),
    Key("serve.smoothing"),
]
EmaAlphaOpt = Annotated[
    float | None,
    typer.Option("--ema-alpha", help="Weight of the newest frame" + default(_SERVE.ema_alpha) + "."),
    Key("serve.ema_alpha"),
]
WindowOpt = Annotated[
    int | None,
    typer.Option("--window", help="Frames in the majority vote" + default(_SERVE.window) + "."),
    Key("serve.window"),
]
HysteresisOpt = Annotated[
    float | None,
    typer.Option("--hysteresis", help="Margin a new label must win by" + default(_SERVE.hysteresis) + "."),
    Key("serve.hysteresis"),
]
HttpOpt = Annotated[
    str | None,
    typer.Option(
        "--http",
        metavar="HOST:PORT",
        help="Web view: live page, /api/events, /stream/N.mjpg, /metrics (127.0.0.1:8080; 0.0.0.0:8080 for others).",
    ),
    Key("serve.http"),
]
HttpTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--http-token",
        envvar="DISTILL_HTTP_TOKEN",
        help="Every web request must carry it: Authorization: Bearer TOKEN, or open /?token=TOKEN once.",
    ),
]
