"""The `openai` teacher against a test server that answers like vLLM (tests/_openai_server.py), and, opt-in,
against a real vLLM server (`DISTILL_VLLM_PYTHON=/path/to/vllm-venv/bin/python pytest -m vllm ...`; the venv is
made by scripts/make-vllm-venv.sh)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from _openai_server import EOS, JSON_HEAD, FakeServer
from conftest import solid_frames
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.dataset import load_labels
from distill.errors import TeacherError
from distill.label import TeacherAnswer, TeacherFailure, build_teacher
from distill.video import Frame, write_video

KEY = "sk-test-0123456789abcdef"  # a fake key; the tests grep every written file and the log for it
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (30, 220, 220), (128, 128, 128), (250, 250, 250)]


def _cfg(server: FakeServer, classes: str, soft: str = "auto", **more):
    flags = {"classes": classes, "teacher.backend": "openai", "teacher.url": server.url, "teacher.model": "toy-vlm"}
    return load_config(overrides=flags | {"teacher.soft_labels": soft, "teacher.timeout_s": 2.0} | more)


def _frames(n: int = 8) -> list[Frame]:
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (n, 1, 1, 3))  # each frame a different colour (the toy model sees the mean)
    noise = rng.integers(-20, 21, (n, 24, 32, 3))
    return [Frame("v.mp4", i, i / 2, np.clip(colours[i] + noise[i], 0, 255).astype(np.uint8)) for i in range(n)]


def _rgb(frame: Frame) -> np.ndarray:
    return np.ascontiguousarray(frame.image[..., ::-1])


@pytest.mark.parametrize(
    "classes",
    ["cat,dog,bird", "idle,idle warning,running", "stopped,red light,idle"],
    ids=["one-token", "shared-prefix", "multi-token"],
)
def test_prompt_logprobs_reproduce_the_exact_class_distribution(classes):
    with FakeServer() as server:
        teacher = build_teacher(_cfg(server, classes))
        frames = _frames()
        answers = teacher.label(frames)
    assert teacher.plan.method == "prompt-logprobs"
    assert all(span.tail == 1 for span in teacher.plan.spans)  # the server appended "\n" after each answer
    assert teacher.plan.end_token == EOS and teacher.approximate == 0
    for frame, answer in zip(frames, answers):
        expected = server.vlm.class_probs(_rgb(frame), teacher.prompt, teacher.texts)
        np.testing.assert_allclose(answer.probs, expected, atol=1e-6)
        assert answer.label in teacher.classes
    if "idle warning" in classes:  # the shared prefix is resolved both ways on these frames
        assert {"idle", "idle warning"} <= {a.label for a in answers}
    assert teacher.describe()["stats"]["soft_labels"] == "prompt-logprobs"


def _first_token_probs(server: FakeServer, frame: Frame, prompt: str, texts: list[str], after: str = "") -> np.ndarray:
    """The toy model's first-token distribution over the classes' first tokens, after `prompt` (which ends with
    "\n", so nothing is appended) and `after` (the start of a JSON answer)."""
    ids = server.vlm.prompt_ids(prompt) + server.vlm.tokenize(after) if after else server.vlm.prompt_ids(prompt)
    lp = server.vlm.logprobs(_rgb(frame).reshape(-1, 3).mean(0), ids)
    first = np.array([lp[server.vlm.tokenize(t)[0]] for t in texts])
    e = np.exp(first - first.max())
    return e / e.sum()


def test_first_token_is_exact_only_for_distinct_one_token_classes():
    frames = _frames(4)
    with FakeServer() as server:
        exact = build_teacher(_cfg(server, "cat,dog,bird", "first-token"))
        answers = exact.label(frames)
        shared = build_teacher(_cfg(server, "idle,idle warning,running", "first-token"))
        shared.label(frames)
    assert exact.plan.constraint == "choice" and exact.approximate == 0
    for frame, answer in zip(frames, answers):
        # the choice constraint renormalises the server's log-probs; the class ratios, and so this, stay exact
        np.testing.assert_allclose(
            answer.probs, _first_token_probs(server, frame, exact.prompt, exact.texts), atol=1e-6
        )
        assert answer.label in exact.classes and answer.raw == answer.label
    assert shared.approximate == len(frames)  # "idle" is both classes' first token; "running" is two tokens


def test_hosted_api_gets_first_token_under_a_json_schema_enum():
    frames = _frames()
    with FakeServer(hosted=True) as server:
        teacher = build_teacher(_cfg(server, "red,blue,green,cat"))
        answers = teacher.label(frames)
        too_many = httpx.post(
            server.url + "/chat/completions", json={"model": "toy-vlm", "messages": [], "top_logprobs": 21}
        )
    assert teacher.plan.method == "first-token" and teacher.plan.constraint == "json"
    assert too_many.status_code == 400  # the cap the teacher stays under
    assert teacher.approximate == 0
    for frame, answer in zip(frames, answers):
        assert answer.label in teacher.classes and answer.raw == answer.label
        expected = _first_token_probs(server, frame, teacher.prompt, teacher.texts, after=JSON_HEAD)
        np.testing.assert_allclose(answer.probs, expected, atol=1e-6)


def test_without_a_constraint_an_answer_outside_the_classes_is_unmatched():
    with FakeServer(hosted=True, json_schema=False) as server:
        teacher = build_teacher(_cfg(server, "red,blue,green,cat"))
        answers = teacher.label(_frames())
    assert teacher.plan.method == "first-token" and teacher.plan.constraint is None
    assert all(isinstance(a, TeacherAnswer) for a in answers)
    for answer in answers:  # a free answer outside the classes is unmatched, never guessed
        assert (answer.label is None) == (answer.raw not in ("red", "blue", "green", "cat"))
    assert None in [a.label for a in answers]


def test_none_is_one_hot_and_recorded_as_hard_labels():
    with FakeServer() as server:
        teacher = build_teacher(_cfg(server, "cat,dog,bird", "none"))
        answers = teacher.label(_frames(3))
    assert all(sorted(a.probs.tolist()) == [0.0, 0.0, 1.0] for a in answers)
    assert teacher.describe()["stats"] == {"soft_labels": "none", "hard_labels": True, "constraint": "choice"}


@pytest.mark.parametrize("soft", ["auto", "first-token"])
def test_every_fault_is_retried_until_the_frame_is_labelled(soft):
    frames = _frames(3)
    with FakeServer() as server:
        teacher = build_teacher(_cfg(server, "cat,dog,bird", soft, **{"teacher.timeout_s": 1.0}))
        server.stall_s = 10.0
        clean = teacher.label(frames)
        server.faults = ["429", "500", "drop", "stall", "malformed", "outside"]
        faulty = teacher.label(frames)
    assert server.faults == [] and len(server.faults_served) == 6
    for a, b in zip(clean, faulty):
        assert isinstance(b, TeacherAnswer) and a.label == b.label
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-7)


def test_a_frame_that_keeps_failing_is_a_failure_not_a_guess():
    frames = _frames(3)
    with FakeServer() as server:
        teacher = build_teacher(_cfg(server, "cat,dog,bird", **{"teacher.retries": 1}))
        teacher.client.backoff_s = 0.01
        server.fail_if = lambda rgb: bool(np.array_equal(rgb, _rgb(frames[1])))
        answers = teacher.label(frames)
    assert isinstance(answers[0], TeacherAnswer) and isinstance(answers[2], TeacherAnswer)
    assert isinstance(answers[1], TeacherFailure) and "HTTP 500" in answers[1].reason
    assert teacher.failures == [("v.mp4", 1, answers[1].reason)]


def _colour_clip(make_clip) -> Path:
    return make_clip("colours.mp4", frames=solid_frames(COLOURS, seconds_each=1.0, fps=8, size=(48, 64)), fps=8)


def test_label_cli_survives_faults_resumes_without_duplicates_and_never_writes_the_key(
    make_clip, tmp_path, monkeypatch, caplog
):
    clip = _colour_clip(make_clip)
    out = tmp_path / "labels"
    monkeypatch.setenv("DISTILL_TEST_KEY", KEY)
    task = tmp_path / "task.yaml"
    task.write_text("teacher: {retries: 3}\n")  # enough for the faults, quick to give up on the cyan frames
    args = ["label", str(clip), "--out", str(out), "--config", str(task), "--classes", "cat,dog,bird"]
    args += ["--fps", "2", "--no-dedup"]
    args += ["--teacher", "openai", "--teacher-url", "", "--teacher-model", "toy-vlm", "--api-key-env"]
    args += ["DISTILL_TEST_KEY", "--teacher-timeout", "1", "--concurrency", "4", "--batch-size", "4"]
    cyan = np.array(COLOURS[3][::-1], float)  # RGB of the cyan segment: its frames fail this time
    runner = CliRunner()
    caplog.set_level(logging.DEBUG)
    with FakeServer(api_key=KEY) as server:
        args[args.index("--teacher-url") + 1] = server.url
        server.faults = ["429", "500", "drop", "stall", "malformed", "outside"]
        server.faults_after = 4  # after the start-up probe (one answer, three classes): faults hit labelling
        server.fail_if = lambda rgb: bool(np.abs(rgb.reshape(-1, 3).mean(0) - cyan).max() < 8)
        first = runner.invoke(app, args)
        assert first.exit_code == 0, first.output
        stored = load_labels(out)
        server.fail_if = None
        second = runner.invoke(app, args)
        assert second.exit_code == 0, second.output
    assert "frame(s) the teacher failed" in first.output and "rerun to label them" in first.output
    assert server.authorizations == {f"Bearer {KEY}"}
    done = load_labels(out)
    keys = list(zip(done["video"], done["frame_index"]))
    assert len(keys) == len(set(keys)) == 12  # 6 colours x 2 frames, the cyan ones added by the rerun
    cyan_frames = {24, 28}  # the 4th second at 8 fps, sampled at 2 fps
    assert cyan_frames.isdisjoint(stored["frame_index"]) and cyan_frames <= set(done["frame_index"])
    assert set(done["label"]) <= {"cat", "dog", "bird"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["teacher"]["backend"] == "openai" and manifest["teacher"]["stats"]["soft_labels"] == "prompt-logprobs"
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if KEY.encode() in p.read_bytes()]
    assert KEY not in first.output + second.output + caplog.text


def test_startup_errors_are_one_line_and_name_the_fix(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key")
    with FakeServer(api_key=KEY) as server:
        with pytest.raises(TeacherError, match="refused the API key") as refused:
            build_teacher(_cfg(server, "cat,dog"))
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        with pytest.raises(TeacherError, match="does not serve 'other'.*toy-vlm"):
            build_teacher(_cfg(server, "cat,dog", **{"teacher.model": "other"}))
        url = server.url
    with pytest.raises(TeacherError, match="cannot reach the teacher server"):
        build_teacher(load_config(overrides={"classes": "cat,dog", "teacher.backend": "openai", "teacher.url": url}))
    assert "sk-wrong-key" not in str(refused.value) and "\n" not in str(refused.value)


def test_frames_go_as_png_by_default_or_jpeg_and_rgb():
    frames = _frames(2)
    with FakeServer() as server:
        png = build_teacher(_cfg(server, "cat,dog", "none"))
        png.label(frames)
        assert server.image_types == {"image/png"}
        jpeg = build_teacher(_cfg(server, "cat,dog", "none", **{"teacher.image_format": "jpeg"}))
        jpeg.label(frames)
    assert server.image_types == {"image/png", "image/jpeg"}
    # (RGB, not BGR: the exact-distribution tests above would fail with swapped channels)


def test_the_description_has_no_credentials(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeServer() as server:
        url = server.url.replace("http://", "http://user:hunter2@")
        teacher = build_teacher(_cfg(server, "cat,dog", **{"teacher.url": url}))
        teacher.label(_frames(1))
    text = json.dumps(teacher.describe())
    assert "hunter2" not in text and KEY not in text and teacher.describe()["url"] == server.url
    assert {a.split()[0] for a in server.authorizations} == {"Basic"}  # the URL's password, as HTTP basic auth


# --- against a real vLLM server (opt-in) ----------------------------------------------------------------------

VLLM_PYTHON = os.environ.get("DISTILL_VLLM_PYTHON")
# PaliGemma has no chat template: vLLM is given one that concatenates the text parts (the image comes first).
PASSTHROUGH = (
    "{%- for m in messages -%}{%- if m.content is string -%}{{ m.content }}{%- else -%}"
    '{%- for p in m.content -%}{%- if p.type == "text" -%}{{ p.text }}{%- endif -%}{%- endfor -%}'
    "{%- endif -%}{%- endfor -%}"
)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """A tiny colour-naming PaliGemma (trained here, ~2 min) served by vLLM on 127.0.0.1 (ready in 1-3 min)."""
    from _colour_paligemma import train_colour_paligemma

    root = tmp_path_factory.mktemp("vllm")
    model = train_colour_paligemma(root / "colour-paligemma")
    (root / "passthrough.jinja").write_text(PASSTHROUGH)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", "colour-pg", "--dtype", "float32", "--max-model-len", "512"]
    cmd += ["--chat-template", str(root / "passthrough.jinja"), "--host", "127.0.0.1", "--port", str(port)]
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    log = open(root / "vllm.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        else:
            pytest.fail(f"vLLM did not start; see {root / 'vllm.log'}")
        yield url, model
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def _colour_video(path: Path, seconds_each: float = 2.0, fps: float = 4.0) -> Path:
    from _colour_paligemma import COLOURS as NAMES
    from _colour_paligemma import colour_image

    rng = np.random.default_rng(7)
    frames = [colour_image(rng, name, 64)[..., ::-1].copy() for name in NAMES for _ in range(round(seconds_each * fps))]
    return write_video(path, frames, fps)


def _real_clip(path: Path, fps: float = 4.0) -> Path:
    """Real photographs (scikit-learn's china.jpg and flower.jpg), panned across: a clip no test designed."""
    from sklearn.datasets import load_sample_images

    frames = []
    for image in load_sample_images().images:
        bgr = cv2.resize(image[..., ::-1], (320, 240), interpolation=cv2.INTER_AREA)
        frames += [bgr[20:140, 10 * i : 10 * i + 160].copy() for i in range(12)]
    return write_video(path, frames, fps)


def _reference_probs(model_dir: Path, frames: list[np.ndarray], prompt: str, texts: list[str]) -> np.ndarray:
    """transformers on the same pixels with vLLM's attention on CPU (plain causal, where transformers makes image
    and prompt one bidirectional block): log p(class tokens + <eos>), renormalised. (B, K)"""
    import torch
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    model = PaliGemmaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = PaliGemmaProcessor.from_pretrained(model_dir)
    tok = processor.tokenizer
    out = []
    for rgb in frames:
        scores = []
        for text in texts:
            batch = processor(images=[rgb], text=["<image>" + prompt], return_tensors="pt")
            tail = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.cat([batch["input_ids"], torch.tensor([tail])], 1)
            # every token "suffix" (1): causal. (Without token_type_ids transformers would make the image tokens
            # one bidirectional block, which vLLM on CPU does not.)
            types = torch.ones_like(ids)
            with torch.no_grad():
                logits = model(input_ids=ids, pixel_values=batch["pixel_values"], token_type_ids=types).logits
            lp = logits[0].float().log_softmax(-1)
            n = batch["input_ids"].shape[1]
            scores.append(sum(float(lp[n - 1 + j, t]) for j, t in enumerate(tail)))
        out.append(torch.tensor(scores).softmax(0).numpy())
    return np.stack(out)


@pytest.mark.vllm
@pytest.mark.skipif(
    not VLLM_PYTHON, reason="set DISTILL_VLLM_PYTHON to a vLLM venv's python (scripts/make-vllm-venv.sh)"
)
def test_label_through_a_real_vllm_server(vllm_server, tmp_path, monkeypatch):
    from _colour_paligemma import COLOURS as NAMES

    from distill.label import build_prompt
    from distill.label._openai import OpenAITeacher
    from distill.video import resize_short_side

    url, model_dir = vllm_server
    task = tmp_path / "task.yaml"
    task.write_text("teacher: {image_size: 32}\n")  # what the in-process teacher shrinks frames to
    colours, real = _colour_video(tmp_path / "colours.mp4"), _real_clip(tmp_path / "real.mp4")
    common = ["--classes", ",".join(NAMES), "--fps", "2", "--no-dedup", "--config", str(task)]
    served = ["--teacher", "openai", "--teacher-url", url, "--teacher-model", "colour-pg", "--concurrency", "8"]
    sent = {}  # (video, frame index) -> the RGB pixels sent to the server (a PNG: lossless)
    image_url = OpenAITeacher._image_url

    def recording(self, frame):
        image = resize_short_side(frame.image, self.input_size) if self.input_size else frame.image
        sent[(frame.video, frame.frame_index)] = np.ascontiguousarray(image[..., ::-1])
        return image_url(self, frame)

    monkeypatch.setattr(OpenAITeacher, "_image_url", recording)
    runner = CliRunner()
    for clip, out, teacher in [
        (colours, "served", served),
        (colours, "local", ["--teacher", "paligemma", "--teacher-model", str(model_dir), "--device", "cpu"]),
        (real, "real", served),
    ]:
        result = runner.invoke(app, ["label", str(clip), "--out", str(tmp_path / out), *common, *teacher])
        assert result.exit_code == 0, result.output
        print(out, result.output)
    a, b, r = (load_labels(tmp_path / name).sort("frame_index") for name in ("served", "local", "real"))
    truth = [list(NAMES)[int(t // 2.0)] for t in a["timestamp_s"]]
    right = np.mean([x == y for x, y in zip(a["label"], truth)])
    agree = np.mean([x == y for x, y in zip(a["label"], b["label"])])
    gap = np.abs(np.array(a["probs"]) - np.array(b["probs"])).max()
    cfg = load_config(task, overrides={"classes": ",".join(NAMES)})
    pixels = [sent[key] for key in zip(r["video"], r["frame_index"])]
    ref = _reference_probs(model_dir, pixels, build_prompt(cfg), list(NAMES))
    real_gap = np.abs(np.array(r["probs"]) - ref).max()
    print(
        f"vLLM: right {right:.3f}, agree with in-process {agree:.3f}, prob gap {gap:.4f}; real clip gap {real_gap:.2e}"
    )
    assert all(label in NAMES for label in [*a["label"], *r["label"]])
    assert right >= 0.95 and agree >= 0.95 and gap <= 0.03
    assert real_gap <= 1e-3


def test_serve_asks_the_server_on_the_fallback_thread_and_survives_its_faults(tmp_path):
    from test_serve_fixtures import colour_clip, make_student

    student = make_student(tmp_path / "student.onnx")  # classes red, green, blue
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=1.0)
    hard = tmp_path / "hard"
    args = ["serve", "--source", str(clip), "--student", str(student), "--no-display"]  # at native rate: 2 s
    args += ["--fallback-threshold", "1.0", "--fallback-max-per-second", "50", "--hard-examples", str(hard)]
    with FakeServer() as server:
        args += ["--teacher", "openai", "--teacher-url", server.url, "--teacher-model", "toy-vlm"]
        server.faults, server.faults_after = ["500"] * 3, 4  # after the start-up probe (one answer, 3 classes)
        result = CliRunner().invoke(app, [*args, "--teacher-timeout", "1"])
    assert result.exit_code == 0, result.output
    assert len(server.faults_served) == 3  # retried on the fallback thread while the student went on
    rows = load_labels(hard)
    assert len(rows) >= 1 and all(t.startswith("openai:toy-vlm:") for t in rows["teacher"])
    assert json.loads((hard / "manifest.json").read_text())["teacher"]["url"] == server.url
