"""Typed task config: defaults < YAML file (`--config`) < command-line flags.

One frozen dataclass per section, validated in `__post_init__`; the YAML mirrors the fields one to one:

```yaml
classes:                       # a bare string is both the label id and the text the teacher is asked to say
  - active
  - {name: error, text: red warning light}
question: what is the state of the machine?
sampling: {fps: 1.0, dedup: true}
teacher: {backend: paligemma, batch_size: 8}
student: {model: mobilenetv3_small_100, image_size: 224}
```

Example:
    >>> cfg = load_config(overrides={"classes": ["cat", "dog"], "sampling.fps": 2})
    >>> cfg.sampling.fps, cfg.class_names
    (2.0, ('cat', 'dog'))

This module does not read videos or models; it only describes what the stages should do.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from distill._files import write_atomic
from distill.errors import ConfigError

DEFAULT_TEACHER_MODEL = "google/paligemma2-3b-mix-224"
DEFAULT_QUESTION = "which of these best describes the image: {choices}?"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ClassSpec:
    """One class: `name` is the label id, `text` is what the teacher is asked to say."""

    name: str
    text: str

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "a class has an empty name; give every class a non-empty name")
        _check(bool(self.text.strip()), f"class {self.name!r} has an empty text; remove `text` or fill it in")


@dataclass(frozen=True)
class SamplingConfig:
    """Which frames of a video are kept (see `distill.decode`), and how decoding them is spread out."""

    fps: float = 1.0  # frames per second of media time
    max_frames_per_video: int | None = None
    start_s: float = 0.0
    end_s: float | None = None
    dedup: bool = True  # skip frames nearly identical to the last kept one
    dedup_threshold: float = 0.05  # largest change of any cell of a 32x32 grey thumbnail, in [0, 1]
    image_size: int = 320  # short side of stored JPEGs (label sets, `distill sample`); 0 keeps the original
    keyframes: bool = False  # keyframes only, at most `fps` per second: the fast mode for slow-changing scenes
    chunk_s: float = 600.0  # a long video is decoded in chunks of this much media time, in parallel; dedup per chunk
    workers: int | None = None  # decode processes (None: cores - 1, at least 1); never changes the frames
    decode_device: str = "cpu"  # cpu | cuda (the GPU's video decoders); never changes the frames

    def __post_init__(self) -> None:
        _check(math.isfinite(self.fps) and self.fps > 0, f"fps must be > 0 (got {self.fps}); try --fps 1")
        _check(self.chunk_s > 0, f"chunk_s must be > 0 seconds (got {self.chunk_s}); 600 suits most videos")
        _check(self.workers is None or self.workers >= 1, f"workers must be >= 1 (got {self.workers}); try --workers 2")
        _check(self.decode_device in {"cpu", "cuda"}, _choice_msg("decode device", self.decode_device, "cpu", "cuda"))
        _check(
            self.max_frames_per_video is None or self.max_frames_per_video > 0,
            "max_frames_per_video must be a positive integer or null",
        )
        _check(self.start_s >= 0, f"start_s must be >= 0 (got {self.start_s})")
        _check(
            self.end_s is None or self.end_s > self.start_s,
            f"end_s ({self.end_s}) must be greater than start_s ({self.start_s})",
        )
        _check(0 <= self.dedup_threshold < 1, "dedup_threshold must be in [0, 1); 0.05 suits most cameras")
        _check(self.image_size >= 0, "image_size must be >= 0 (0 keeps frames at their original size)")

    def frames_key(self) -> dict[str, Any]:
        """The settings that decide which frames are kept and how they are stored: all but workers and device."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("workers", "decode_device")}


@dataclass(frozen=True)
class TeacherConfig:
    """The vision-language model (or annotations file) that labels frames."""

    backend: str = "paligemma"  # a registered teacher (`distill.label.teacher_backends()`), checked when built
    model: str = DEFAULT_TEACHER_MODEL  # hub id or local folder
    mode: str = "constrained"  # constrained | generate
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32
    device: str = "auto"
    batch_size: int = 8
    max_new_tokens: int = 10  # generate mode only
    local_files_only: bool = False
    annotations: str | None = None  # CSV of segments, annotations backend only
    # openai backend (a VLM behind an OpenAI-compatible server; `model` is the served model's name)
    url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the API key (never the key itself)
    soft_labels: str = "auto"  # auto | prompt-logprobs | first-token | none
    concurrency: int = 8  # requests in flight
    timeout_s: float = 60.0  # per request attempt
    retries: int = 4  # attempts after the first, with exponential backoff (429 waits for Retry-After)
    max_rps: float | None = None  # requests started per second, at most
    image_size: int | None = None  # short side frames are shrunk to before sending; None: as sampled
    image_format: str = "png"  # png (exact pixels) | jpeg (smaller)

    def __post_init__(self) -> None:
        _check(bool(self.backend.strip()), "teacher backend is empty; pass --teacher paligemma or annotations")
        soft = ("auto", "prompt-logprobs", "first-token", "none")
        _check(self.soft_labels in soft, _choice_msg("teacher soft_labels", self.soft_labels, *soft))
        _check(
            self.image_format in {"png", "jpeg"}, _choice_msg("teacher image_format", self.image_format, "png", "jpeg")
        )
        _check(self.concurrency > 0, f"teacher concurrency must be > 0 (got {self.concurrency})")
        _check(self.timeout_s > 0, f"teacher timeout_s must be > 0 (got {self.timeout_s})")
        _check(self.retries >= 0, f"teacher retries must be >= 0 (got {self.retries})")
        _check(self.max_rps is None or self.max_rps > 0, f"teacher max_rps must be > 0 or null (got {self.max_rps})")
        _check(bool(self.api_key_env.strip()), "teacher api_key_env is empty; name a variable, e.g. OPENAI_API_KEY")
        _check(
            self.mode in {"constrained", "generate"}, _choice_msg("teacher mode", self.mode, "constrained", "generate")
        )
        _check(
            self.dtype in {"auto", "bfloat16", "float16", "float32"},
            _choice_msg("teacher dtype", self.dtype, "auto", "bfloat16", "float16", "float32"),
        )
        _check(self.batch_size > 0, f"teacher batch_size must be > 0 (got {self.batch_size})")
        _check(self.max_new_tokens > 0, f"max_new_tokens must be > 0 (got {self.max_new_tokens})")


@dataclass(frozen=True)
class StudentConfig:
    """The small timm classifier trained on the teacher's labels."""

    model: str = "mobilenetv3_small_100"  # any timm model name
    image_size: int = 224
    pretrained: bool = True

    def __post_init__(self) -> None:
        _check(self.image_size >= 32, f"student image_size must be >= 32 (got {self.image_size})")


@dataclass(frozen=True)
class TrainConfig:
    """How the student is trained."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    soft: bool = True  # train on the teacher's distributions when the label set has them
    temperature: float = 1.0
    mixup: float = 0.2  # mixup alpha (0 turns it off); used with soft targets
    val_fraction: float = 0.2
    patience: int = 5  # early stopping, in epochs without a better val agreement
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs > 0, f"epochs must be > 0 (got {self.epochs})")
        _check(self.batch_size > 0, f"batch_size must be > 0 (got {self.batch_size})")
        _check(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        _check(self.temperature > 0, f"temperature must be > 0 (got {self.temperature})")
        _check(self.mixup >= 0, f"mixup must be >= 0 (got {self.mixup})")
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1) (got {self.val_fraction})")
        _check(self.patience > 0, f"patience must be > 0 (got {self.patience})")


@dataclass(frozen=True)
class ServeConfig:
    """The real-time loop: smoothing and teacher fallback."""

    smoothing: str = "ema"  # ema | vote
    ema_alpha: float = 0.3  # weight of the newest frame
    window: int = 5  # frames, for majority vote
    hysteresis: float = 0.1  # a new label must beat the shown one by this margin
    fallback_threshold: float = 0.0  # ask the teacher when smoothed confidence is below this (0: never)
    fallback_max_per_second: float = 1.0
    teacher_hold_s: float = 2.0  # how long a teacher answer overrides the student
    http: str | None = None  # HOST:PORT of the web view (live page, events, metrics); None: no web view

    def __post_init__(self) -> None:
        _check(self.smoothing in {"ema", "vote"}, _choice_msg("smoothing", self.smoothing, "ema", "vote"))
        if self.http is not None:
            parse_http_address(self.http)
        _check(0 < self.ema_alpha <= 1, f"ema_alpha must be in (0, 1] (got {self.ema_alpha})")
        _check(self.window > 0, f"window must be > 0 (got {self.window})")
        _check(0 <= self.hysteresis < 1, f"hysteresis must be in [0, 1) (got {self.hysteresis})")
        _check(
            0 <= self.fallback_threshold <= 1, f"fallback_threshold must be in [0, 1] (got {self.fallback_threshold})"
        )
        _check(self.fallback_max_per_second > 0, "fallback_max_per_second must be > 0")
        _check(self.teacher_hold_s >= 0, "teacher_hold_s must be >= 0")


@dataclass(frozen=True)
class RayConfig:
    """The Ray engine (`engine: ray`): which cluster, and how much of it each stage takes."""

    address: str | None = None  # None: start Ray on this machine; auto: the cluster here; ray://HOST:10001
    teacher_actors: int | None = None  # teacher replicas (None: one per GPU of the cluster, else 1)
    decode_cpus: int | None = None  # decode tasks at once, one CPU each (None: every CPU the teacher leaves)
    max_retries: int = 3  # a task whose worker dies (or that raises) is run again up to this many times

    def __post_init__(self) -> None:
        _check(
            self.teacher_actors is None or self.teacher_actors >= 1,
            f"teacher_actors must be >= 1 (got {self.teacher_actors}); try --teacher-actors 1",
        )
        _check(
            self.decode_cpus is None or self.decode_cpus >= 1,
            f"decode_cpus must be >= 1 (got {self.decode_cpus}); try --decode-cpus 2",
        )
        _check(self.max_retries >= 0, f"ray max_retries must be >= 0 (got {self.max_retries})")


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class TaskConfig:
    """Everything a run needs to know about the task. `classes` may be empty until a command needs them."""

    classes: tuple[ClassSpec, ...] = ()
    question: str = DEFAULT_QUESTION
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    engine: str = "local"  # what runs `distill label`: local (this machine's processes) | ray (a Ray cluster)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        _check(bool(self.question.strip()), "question is empty; give the teacher a question (--question)")
        _check(self.engine in ENGINES, _choice_msg("engine", self.engine, *ENGINES))
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, f"duplicate class names: {', '.join(dupes)}; every class needs its own name")
        texts = [c.text.strip().lower() for c in self.classes]
        dupes = sorted({t for t in texts if texts.count(t) > 1})
        if dupes:
            raise ConfigError(f"two classes share the text {dupes[0]!r}; give each class its own text")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def require_classes(self) -> TaskConfig:
        """Return self, or raise if fewer than two classes are set (commands that label need them)."""
        _check(
            len(self.classes) >= 2,
            f"need at least two classes (got {len(self.classes)}); pass --classes a,b or a --config with `classes:`",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["classes"] = [c if c["name"] != c["text"] else c["name"] for c in data["classes"]]
        return data


_SECTIONS: dict[str, type] = {
    "sampling": SamplingConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "train": TrainConfig,
    "serve": ServeConfig,
    "ray": RayConfig,
}


def parse_http_address(address: str | int) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (host 127.0.0.1: only this machine) -> (host, port).

    Example:
        >>> parse_http_address("0.0.0.0:8080"), parse_http_address(":8080"), parse_http_address("[::1]:80")
        (('0.0.0.0', 8080), ('127.0.0.1', 8080), ('::1', 80))
    """
    text = str(address).strip()
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    _check(
        port.isdigit() and int(port) <= 65535 and (":" not in host or text.startswith("[")),
        f"http address {text!r} is not HOST:PORT; try --http 127.0.0.1:8080 (0.0.0.0:8080 for other machines)",
    )
    return host, int(port)


def _choice_msg(what: str, value: object, *choices: str) -> str:
    return f"unknown {what} {value!r}; choose one of: {', '.join(choices)}"


def _unknown_key(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown key {key!r} in {where}{hint}")


def parse_classes(value: Any) -> tuple[ClassSpec, ...]:
    """Parse classes from a YAML list, a comma-separated string, or `ClassSpec`s.

    Each item is a bare string (name and text), a `{name, text}` mapping, or a one-key `{name: text}` mapping.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError("classes must be a list (YAML) or a comma-separated string (--classes a,b,c)")
    specs = []
    for item in value:
        if isinstance(item, ClassSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs.append(ClassSpec(item.strip(), item.strip()))
        elif isinstance(item, Mapping) and "name" in item:
            extra = set(item) - {"name", "text"}
            if extra:
                raise _unknown_key(sorted(extra)[0], ["name", "text"], f"class {item['name']!r}")
            name = str(item["name"]).strip()
            specs.append(ClassSpec(name, str(item.get("text") or name).strip()))
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, text),) = item.items()
            specs.append(ClassSpec(str(name).strip(), str(text).strip()))
        else:
            raise ConfigError(f"cannot read class {item!r}; write a name, or {{name: ..., text: ...}}")
    if len(specs) < 2:
        raise ConfigError(f"need at least two classes (got {len(specs)}); a classifier chooses between classes")
    return tuple(specs)


def _build_section(cls: type, values: Any, where: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values (got {type(values).__name__})")
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            raise _unknown_key(str(key), known, where)
    try:
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {where}: {exc}") from None


def _coerce(cls: type, key: str, value: Any) -> Any:
    """Convert YAML/CLI values to the field's type: '2' -> 2.0 for a float field, 'true' -> True, ..."""
    default = next(f for f in fields(cls) if f.name == key).default
    if value is None or default is dataclasses.MISSING:
        return value
    kind = type(default) if default is not None else None
    if kind is bool and not isinstance(value, bool):
        text = str(value).strip().lower()
        if text not in {"true", "false", "yes", "no", "1", "0", "on", "off"}:
            raise ValueError(f"{key} must be true or false (got {value!r})")
        return text in {"true", "yes", "1", "on"}
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number (got {value!r})") from None
        if kind is int and not number.is_integer():
            raise ValueError(f"{key} must be a whole number (got {value!r})")
        return kind(number)
    if key in _OPTIONAL_NUMBERS:
        return _OPTIONAL_NUMBERS[key](value)
    return value


_OPTIONAL_NUMBERS = {
    "max_frames_per_video": int,
    "end_s": float,
    "workers": int,
    "teacher_actors": int,
    "decode_cpus": int,
}  # fields whose default is None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        data[head] = value
        return
    section = data.setdefault(head, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{head} must be a mapping")
    section[rest] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a task YAML file into a plain dict, with one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the --config path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (keys like classes:, sampling:)")
    return data


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TaskConfig:
    """Resolve the task config: defaults < YAML file at `path` < `overrides`.

    Args:
        path: a task YAML file, or None for defaults only.
        overrides: flag values keyed by dotted name (`"sampling.fps"`, `"classes"`); None values are ignored,
            so unset CLI flags never override the file.

    Raises:
        ConfigError: one line naming the bad key or value and the fix.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return config_from_dict(data, where=str(path) if path else "config")


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> TaskConfig:
    """Build a validated `TaskConfig` from a plain dict (as read from YAML or a manifest)."""
    known = [f.name for f in fields(TaskConfig)]
    for key in data:
        if key not in known:
            raise _unknown_key(str(key), known, where)
    kwargs: dict[str, Any] = {}
    if data.get("classes") is not None:
        kwargs["classes"] = parse_classes(data["classes"])
    if data.get("question") is not None:
        kwargs["question"] = str(data["question"])
    if data.get("engine") is not None:
        kwargs["engine"] = str(data["engine"]).strip().lower()
    for name, cls in _SECTIONS.items():
        kwargs[name] = _build_section(cls, data.get(name), f"{where}: {name}")
    return TaskConfig(**kwargs)


def save_config(cfg: TaskConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML next to a run's outputs, so the run can be repeated."""
    return write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
