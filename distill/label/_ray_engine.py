"""`distill label --engine ray`: the labelling run on a Ray cluster (or Ray started on this machine), same label set.

```
driver (this process)                          Ray cluster
---------------------                          -----------
find videos, open the label set  ---------->   probe: build the teacher once (its input size; fails fast)
resume: what is finished          ---------->  plan tasks: video -> (video, time chunk) work items
work items not yet finished       ---------->  Ray Data:  sample stage (tasks, one CPU each, --decode-cpus)
                                                          chunk -> JPEG frames (stored + teacher's view)
LabelSetWriter (one, here)  <-- rows stream <--           teacher stage (actor pool, --teacher-actors;
  shards, manifest, resume                                one GPU per actor where the cluster has GPUs)
```
The stages do what the local engine's do (`_ray_stages.py`), so rows and probabilities equal a local run's. Only
this process writes the label set, so the manifest stays consistent; it records a chunk as finished once a
shard holds its rows (`_ray_driver.py`), so a driver killed with SIGKILL loses at most one unwritten shard and
the same command resumes. A task whose worker dies, or that raises, is run again up to `ray.max_retries` times
(a teacher actor that dies is replaced), then its chunk is reported by name while the rest go on; a file FFmpeg
cannot read is reported at once.

This is the only module that imports Ray (an import-linter contract holds it); without Ray installed,
`--engine ray` is a one-line error naming `pip install 'distill[ray]'`. It does not sample, label or store
rows itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from distill._decode_workers import stop_on_sigterm
from distill._progress import progress_bar
from distill.config import TaskConfig, save_config
from distill.dataset import MANIFEST, LabelSetWriter
from distill.errors import ConfigError, TeacherError, VideoError, first_line
from distill.label._feed import Resume
from distill.label._ray_driver import Ledger, Store
from distill.label._ray_stages import (
    TeacherStage,
    describe_error,
    plan_video,
    probe_teacher,
    sample_rows,
    work_item,
)
from distill.label._run import LabelSummary, run_record
from distill.label._teacher import describe_teacher, teacher_tag
from distill.video import VideoFile, find_videos

logger = logging.getLogger(__name__)

INSTALL = "pip install 'distill[ray]'"


@dataclass
class RayLabelSummary(LabelSummary):
    """A `LabelSummary` plus what the Ray engine ran on."""

    dashboard: str | None = None  # the Ray dashboard's address, when one is running
    teacher_actors: int = 0
    gpus_per_actor: int = 0

    @property
    def teacher_busy(self) -> float:
        """The teacher actors' mean busy share of the wall time."""
        if self.seconds <= 0 or not self.teacher_actors:
            return 0.0
        return min(self.teacher_s / (self.seconds * self.teacher_actors), 1.0)

    @property
    def bottleneck(self) -> str:
        if self.teacher_busy >= 0.8:
            return "the teacher is the bottleneck (more --teacher-actors, GPUs, or a larger --batch-size)"
        return "decoding is the bottleneck (more --decode-cpus or nodes, or --keyframes)"

    def engine_line(self) -> str:
        """What the run took of the cluster, and where its dashboard is."""
        gpus = f", {self.gpus_per_actor} GPU each" if self.gpus_per_actor else " on CPUs"
        line = f"Ray: {self.teacher_actors} teacher actor(s){gpus}, {self.workers} decode CPU(s)"
        return line + (f"; dashboard {self.dashboard}" if self.dashboard else "")


class _Resources(NamedTuple):
    teacher_actors: int
    gpus_per_actor: int
    decode_cpus: int
    cpus_per_actor: int


def import_ray() -> Any:
    """The `ray` module, or a one-line `ConfigError` naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data: ray[data])
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray, which is not installed; run: {INSTALL}") from None
    return ray


def run_label_ray(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    cfg: TaskConfig,
    *,
    overwrite: bool = False,
    show_progress: bool = False,
    shard_rows: int = 512,
    root: str | os.PathLike[str] | None = None,
) -> RayLabelSummary:
    """Label every sampled frame of `inputs` into `out` on Ray: the same label set as `run_label`'s, resumable alike.

    Ray is joined at `cfg.ray.address` (`auto`, `ray://host:10001`), started on this machine when that is None,
    or used as it is when this process already called `ray.init`.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached. VideoError, TeacherError,
            DatasetError: as `run_label`.

    Example:
        >>> cfg = load_config("task.yaml", {"engine": "ray", "ray.address": "auto"})  # doctest: +SKIP
        >>> run_label_ray(["/shared/videos"], "runs/labels", cfg).video_hours_per_hour  # doctest: +SKIP
    """
    cfg.require_classes()
    ray = import_ray()
    if cfg.sampling.decode_device != "cpu":
        raise ConfigError("--engine ray decodes on CPUs only; leave out --decode-device (or use --engine local)")
    out = Path(out)
    videos, failures = find_videos(inputs)
    if not videos:
        reason = f" ({failures[0].name}: {failures[0].reason})" if failures else ""
        raise VideoError(f"no video found in {', '.join(map(str, inputs))}{reason}; pass video files or folders")
    if root is None and len(inputs) == 1 and Path(inputs[0]).is_dir():
        root = inputs[0]
    run = _Run(out, cfg, None if root is None else str(root), overwrite, shard_rows)
    resume = Resume(run.writer.manifest.get("finished") if run.writer else None, cfg.sampling, videos)
    todo = [v for v in videos if not resume.video_done(v.name)]
    summary = RayLabelSummary(out=out, videos_found=len(videos), failures=list(failures))
    summary.videos_already_done, summary.batch_size = len(videos) - len(todo), cfg.teacher.batch_size
    ledger = Ledger()
    if todo:  # else nothing to do: Ray is not even started
        with _session(ray, cfg.ray.address) as dashboard, stop_on_sigterm(), _quiet_ray_data():
            summary.dashboard = dashboard
            run.label(ray, todo, resume, ledger, summary, show_progress)
    summary.failures += ledger.lost(cfg.ray.max_retries + 1)
    _finish(summary, run.writer, resume, ledger)
    if summary.stats.videos == 0 and summary.videos_already_done == 0:
        raise VideoError(f"no video could be sampled from {', '.join(map(str, inputs))}; see the warnings above")
    return summary


class _Run:
    """One run's label set and settings; `label` does the work on Ray."""

    def __init__(self, out: Path, cfg: TaskConfig, root: str | None, overwrite: bool, shard_rows: int) -> None:
        self.out, self.cfg, self.root = out, cfg, root
        self.opts = {"config": cfg.to_dict(), "shard_rows": shard_rows, "overwrite": overwrite}
        self.writer: LabelSetWriter | None = None
        if (out / MANIFEST).exists() and not overwrite:  # resume, or refuse at once (before starting Ray)
            self.writer = LabelSetWriter(out, cfg.class_names, describe_teacher(cfg), **self.opts)

    def label(
        self,
        ray: Any,
        todo: list[VideoFile],
        resume: Resume,
        ledger: Ledger,
        summary: RayLabelSummary,
        show_progress: bool,
    ) -> None:
        cfg = self.cfg
        res = _resources(ray, cfg)
        summary.teacher_actors, summary.gpus_per_actor = res.teacher_actors, res.gpus_per_actor
        summary.workers = res.decode_cpus
        probe = _submit_probe(ray, cfg, self.root, res)  # first, so that it does not queue behind the plans
        plans = _submit_plans(ray, todo, cfg)  # planning runs while the teacher is built
        input_size, description = _probe_result(ray, probe, cfg)
        if self.writer is None:  # only now: a teacher that fails to load leaves no label set behind
            self.writer = LabelSetWriter(self.out, cfg.class_names, description, **self.opts)
        save_config(cfg, self.out / "config.yaml")
        start = time.perf_counter()
        with self.writer, progress_bar("labelling", unit="video s", enabled=show_progress) as bar:
            if summary.dashboard:
                bar.update(description=f"labelling (Ray dashboard {summary.dashboard})")
            items = _collect_plans(ray, plans, cfg, resume, self.writer.done, ledger, summary)
            bar.update(total=ledger.total_s or None)
            store = Store(self.writer, resume, ledger, summary, bar, tag=teacher_tag(description))
            if items:
                ds = _pipeline(ray, items, cfg, self.root, res, input_size)
                with _prompt_start():
                    batches = ds.iter_batches(batch_size=None, batch_format="numpy")
                    store.consume(batches, description.get("backend", "?"), res.teacher_actors)
            store.close()
        summary.seconds = time.perf_counter() - start


@contextlib.contextmanager
def _session(ray: Any, address: str | None) -> Iterator[str | None]:
    """Join (or start) Ray for the run and leave it afterwards; yields the dashboard's address, if any."""
    if ray.is_initialized():  # the caller's Ray: use it as it is, and leave it running
        yield None
        return
    debug = logging.getLogger("distill").isEnabledFor(logging.DEBUG)
    try:
        context = ray.init(address=address, logging_level=logging.DEBUG if debug else logging.ERROR)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all one line
        where = f"the Ray cluster at {address}" if address else "Ray on this machine"
        fix = "start one with `ray start --head`, or leave out --ray-address" if address else "see `ray start --help`"
        raise ConfigError(f"cannot reach {where} ({first_line(exc)}); {fix}") from None
    try:
        url = getattr(context, "dashboard_url", None)
        yield (url if url.startswith("http") else f"http://{url}") if url else None
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data logs every run's plan and progress on the console (its log files keep them), and warns when a
    stage gets fewer inputs than it may run at once (one video); errors still show."""
    console = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in console]
    for handler in console:
        handler.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data\.")
            yield
    finally:
        for handler, level in zip(console, levels):
            handler.setLevel(level)


@contextlib.contextmanager
def _prompt_start() -> Iterator[None]:
    """Ray Data (2.60) looks up how much of the cluster it may use once a second, and its first look finds nothing
    (its autoscaling coordinator answers only the second), so a pipeline runs one task at a time for its first
    second. Looking every 0.1 s starts the decode tasks together. The interval is an internal class setting with
    no public option: it is put back afterwards, and a Ray Data without it is left as it is."""
    try:
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:
        yield
        return
    interval = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)
    if not isinstance(interval, (int, float)):
        yield
        return
    ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = min(interval, 0.1)
    try:
        yield
    finally:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = interval


def _resources(ray: Any, cfg: TaskConfig) -> _Resources:
    """Teacher actors (one per GPU of the cluster, else one, unless set) and the decode tasks run at once."""
    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 1)), int(total.get("GPU", 0))
    use_gpus = gpus > 0 and cfg.teacher.device != "cpu"
    actors = cfg.ray.teacher_actors or (gpus if use_gpus else 1)
    actor_cpus = 1 if cpus > actors else 0  # one CPU each, unless that would leave none to decode on
    decode = cfg.ray.decode_cpus or max(1, cpus - actors * actor_cpus)
    return _Resources(actors, 1 if use_gpus else 0, decode, actor_cpus)


def _submit_plans(ray: Any, videos: Sequence[VideoFile], cfg: TaskConfig) -> dict[Any, VideoFile]:
    tries = cfg.ray.max_retries
    remote = ray.remote(num_cpus=1, max_retries=tries, retry_exceptions=True)(plan_video)
    return {remote.remote(video, cfg.sampling): video for video in videos}


def _submit_probe(ray: Any, cfg: TaskConfig, root: str | None, res: _Resources) -> Any:
    """Build the teacher once, where an actor would run: its input size (to pre-shrink frames to) and description."""
    options = {"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor, "max_retries": cfg.ray.max_retries}
    if res.gpus_per_actor:
        options["max_calls"] = 1  # its process exits after the call, so it keeps no GPU memory
    return ray.remote(**options)(probe_teacher).remote(cfg, root)


def _probe_result(ray: Any, probe: Any, cfg: TaskConfig) -> tuple[int | None, dict[str, Any]]:
    status, value = ray.get(probe)
    if status == "error":
        raise TeacherError(describe_error(value, cfg.teacher.backend))
    return value


def _collect_plans(
    ray: Any,
    plans: dict[Any, VideoFile],
    cfg: TaskConfig,
    resume: Resume,
    done: set[tuple[str, int]],
    ledger: Ledger,
    summary: RayLabelSummary,
) -> list[bytes]:
    """The plans as they come in -> the work items not yet finished (each with the frames already stored), the most
    decoding first (frames to decode x picture size; then the longest, then in the order of the videos): the
    slowest are not left to run on their own at the end."""
    finished = resume.finished_chunks()
    stored: dict[str, set[int]] = {}
    for name, index in done:
        stored.setdefault(name, set()).add(index)
    order = {video.name: i for i, video in enumerate(plans.values())}
    items: list[tuple[tuple[float, int, int], bytes]] = []
    pending = dict(plans)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=min(len(pending), 64), timeout=1.0)
        for ref in ready:
            video = pending.pop(ref)
            try:
                status, value = ray.get(ref)
            except ray.exceptions.RayError as exc:
                status, value = "failed", f"planning failed {cfg.ray.max_retries + 1} times ({first_line(exc)})"
            if status == "failed":
                summary.failures.append(ledger.fail(video.name, value))
                logger.warning("skipping %s: %s", video.name, value)
                continue
            chunks, duration, note = value
            if note:
                logger.warning("%s", note)
            chunks = [c for c in chunks if c.number not in finished.get(video.name, set())]
            mine = stored.get(video.name, set())
            for c in chunks:
                key = (-c.decode_cost, c.start_s - c.end_s, order[video.name], c.number)
                items.append((key, work_item(c, frozenset(i for i, _, _ in c.frames if i in mine))))
            summary.video_s += ledger.plan(video.name, chunks, duration)
    return [item for _, item in sorted(items, key=lambda pair: pair[0])]


def _pipeline(ray: Any, items: list[bytes], cfg: TaskConfig, root: str | None, res: _Resources, input_size: int | None):
    """The Ray Data pipeline over the work items: a sampling stage (tasks) into a teacher stage (actor pool)."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    tries = cfg.ray.max_retries
    ds = ray.data.from_items([{"item": item} for item in items], override_num_blocks=len(items))
    ctx = ds.context  # this dataset's own copy of the settings
    ctx.max_errored_blocks = -1  # a chunk that fails for good is dropped here and reported by the ledger
    ctx.retried_map_errors, ctx.max_map_retries = True, tries
    ctx.enable_progress_bars = ctx.print_on_execution_start = False  # distill draws its own bar
    with warnings.catch_warnings():  # Ray Data >= 2.60 warns on task retry options, its only way to bound them
        warnings.simplefilter("ignore")
        ds = ds.map_batches(
            sample_rows,
            batch_size=1,  # one chunk per task: a failure costs (and names) one chunk
            fn_kwargs={"sampling": cfg.sampling, "teacher_size": input_size},
            compute=TaskPoolStrategy(size=res.decode_cpus),
            num_cpus=1,
            max_retries=tries,
        )
        return ds.map_batches(
            TeacherStage,
            batch_size=cfg.teacher.batch_size,
            fn_constructor_kwargs={"cfg": cfg, "root": root},
            compute=ActorPoolStrategy(size=res.teacher_actors),
            num_cpus=res.cpus_per_actor,
            num_gpus=res.gpus_per_actor,
            max_task_retries=tries,
        )


def _finish(summary: RayLabelSummary, writer: LabelSetWriter, resume: Resume, ledger: Ledger) -> None:
    """Fill the summary from the manifest; record what is finished and the run's statistics."""
    summary.stats.videos = ledger.videos_finished
    counts = writer.manifest["counts"]
    summary.total_frames, summary.unmatched = counts["frames"], counts["unmatched"]
    summary.per_class = dict(counts["per_class"])
    if summary.frames_labelled or "run" not in writer.manifest:  # a no-op rerun keeps the real run's cost
        record = run_record(summary) | {"engine": "ray", "teacher_actors": summary.teacher_actors}
        writer.update(finished=resume.state(), run=record)
    else:
        writer.update(finished=resume.state())
