"""The `distill` command line: parse flags, resolve the config, call one library function, print a summary.

Known errors (`DistillError`) become one line on stderr and exit code 1; `--debug` shows the traceback.
Heavy libraries are imported inside the commands, so `distill --help` is instant.
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

from distill.errors import DistillError

app = typer.Typer(
    name="distill",
    help="Turn hours of video into a fast frame classifier: a VLM teacher labels, a small student learns.\n\n"
    "Workflow: sample -> label -> train -> serve -> compare.  Try `distill demo` first.",
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
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    app.command()(wrapper)
    return func


# --- shared options ------------------------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Task YAML (classes, question, sampling, ...); flags override it.")
]
FpsOpt = Annotated[float | None, typer.Option("--fps", help="Frames sampled per second of video time [default: 1].")]
DedupOpt = Annotated[
    bool | None,
    typer.Option("--dedup/--no-dedup", help="Skip frames nearly identical to the last kept one [default: on]."),
]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", help="At most this many frames per video.")]
VideosArg = Annotated[
    list[str], typer.Argument(help="Video files, folders (searched recursively) or globs.", show_default=False)
]


def load_task(config: Path | None, **overrides: Any):
    """Resolve defaults < YAML < flags (flags left unset do not override)."""
    from distill.config import load_config

    return load_config(config, overrides)


# --- commands ------------------------------------------------------------------------------------------------


@command
def sample(
    videos: VideosArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for index.csv and the JPEGs.")] = Path("runs/sample"),
    config: ConfigOpt = None,
    fps: FpsOpt = None,
    dedup: DedupOpt = None,
    max_frames: MaxFramesOpt = None,
    start: Annotated[float | None, typer.Option("--start", help="Skip the first S seconds of every video.")] = None,
    end: Annotated[float | None, typer.Option("--end", help="Stop at S seconds into every video.")] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Short side of saved JPEGs in pixels, 0 = original [default: 320]."),
    ] = None,
) -> None:
    """Preview sampling: write the frames a labelling run would see (DIR/index.csv + JPEGs)."""
    from distill.sample import run_sample

    cfg = load_task(
        config,
        **{
            "sampling.fps": fps,
            "sampling.dedup": dedup,
            "sampling.max_frames_per_video": max_frames,
            "sampling.start_s": start,
            "sampling.end_s": end,
            "sampling.image_size": image_size,
        },
    )
    summary = run_sample(videos, out, cfg, show_progress=sys.stderr.isatty())
    s = summary.stats
    out_console.print(
        f"sampled [bold]{s.videos}[/] video(s): [bold]{s.frames_kept}[/] frames kept, "
        f"{s.duplicates} near-duplicates skipped, {len(summary.failures)} failed -> {out / 'index.csv'}",
        highlight=False,
    )


def main() -> None:
    """Console-script entry point."""
    app(prog_name="distill")


if __name__ == "__main__":
    main()
