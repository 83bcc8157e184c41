"""`run_serve(http=...)` end to end: the web view of a real serving run (tiny ONNX student, generated clip)."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from test_serve_fixtures import FixedTeacher, colour_clip, make_student

pytest.importorskip("uvicorn")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from distill.cli import app  # noqa: E402
from distill.config import load_config, parse_http_address  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.export import Student  # noqa: E402
from distill.realtime import run_serve  # noqa: E402

TOKEN = "tok-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Client:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def open(self, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse()

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        response = self.open(path, headers)
        return response.status, response.read()


def sse_records(response: http.client.HTTPResponse) -> list[dict]:
    """Every event's JSON until the server ends the stream."""
    records = []
    for raw in iter(response.readline, b""):
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            records.append(json.loads(line[6:]))
    return records


def test_web_view_of_a_serving_run(tmp_path: Path) -> None:
    student = Student(make_student(tmp_path / "student.onnx"), threads=1)
    clip = colour_clip(tmp_path / "rgb.mp4", ["red", "green", "blue", "red"], seconds_each=0.8)
    events = tmp_path / "events.jsonl"
    ready: queue.Queue[str] = queue.Queue()
    result: dict = {}

    # a teacher asked about every frame whose answers are never shown (held 0 s): fallbacks to count, same labels
    teacher = FixedTeacher("green")
    cfg = load_config(overrides={"serve.fallback_threshold": 1.0, "serve.teacher_hold_s": 0.0})

    def serve() -> None:
        result["summary"] = run_serve(
            [clip], student, cfg, teacher=teacher, events=events, hard_examples=None, http="127.0.0.1:0",
            http_token=TOKEN, on_http=ready.put, stats_every_s=1.0,
        )  # fmt: skip

    thread = threading.Thread(target=serve)
    thread.start()
    client = Client(ready.get(timeout=60))
    stream = client.open("/api/events?after=0", AUTH)  # from the first event on, until the run ends
    assert stream.status == 200 and stream.getheader("content-type").startswith("text/event-stream")
    collected: dict = {}
    reader = threading.Thread(target=lambda: collected.update(records=sse_records(stream)))
    reader.start()

    assert client.get("/api/sources")[0] == 401  # no token
    assert client.get("/api/sources", {"Authorization": "Bearer nope"})[0] == 401
    status, body = client.get("/nothing-here", AUTH)
    assert status == 404 and body.decode().count("\n") == 1

    def frames_classified() -> float:
        status, body = client.get("/metrics", AUTH)
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        return next(s.value for s in families["distill_frames_classified"].samples if s.name.endswith("_total"))

    mjpeg = client.open("/stream/0.mjpg", AUTH)
    assert mjpeg.getheader("content-type").startswith("multipart/x-mixed-replace")
    first = frames_classified()
    assert mjpeg.readline() == b"--frame\r\n" and mjpeg.readline() == b"Content-Type: image/jpeg\r\n"
    length = int(mjpeg.readline().split(b": ")[1])
    mjpeg.readline()
    image = cv2.imdecode(np.frombuffer(mjpeg.read(length), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] >= 64
    mjpeg.close()
    deadline = time.monotonic() + 20
    while (later := frames_classified()) <= first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert later > first  # the counter grows while the clip plays
    status, body = client.get("/api/sources", AUTH)
    (source,) = json.loads(body)["sources"]
    assert source["stats"]["fallbacks"] >= 1 and source["stats"]["classified"] >= 1
    assert source["label"] in ("red", "green", "blue") and source["by"] == "student"

    thread.join(60)
    reader.join(10)
    assert not reader.is_alive(), "the event stream did not end with the run"
    summary = result["summary"]
    assert summary.stopped_by == "end" and summary.threads_joined

    from_file = [json.loads(line) for line in events.read_text().splitlines()]
    labels = [r["label"] for r in from_file if r["event"] == "label"]
    assert labels == ["red", "green", "blue", "red"]
    assert collected["records"] == from_file  # the same events, in the same order, final stats included
    assert from_file[-1]["event"] == "stats" and from_file[-1]["final"]


def test_http_address_that_cannot_be_bound_is_a_config_error(tmp_path: Path) -> None:
    student = Student(make_student(tmp_path / "student.onnx"), threads=1)
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=0.2)
    with pytest.raises(ConfigError, match="cannot listen on 203.0.113.7:80"):
        run_serve([clip], student, load_config(), http="203.0.113.7:80", hard_examples=None)


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), (":8080", ("127.0.0.1", 8080)), ("8080", ("127.0.0.1", 8080)),
     ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9000", ("::1", 9000)), ("cam-box.local:80", ("cam-box.local", 80))],
)  # fmt: skip
def test_http_addresses(address: str, expected: tuple[str, int]) -> None:
    assert parse_http_address(address) == expected
    assert load_config(overrides={"serve.http": address}).serve.http == address


@pytest.mark.parametrize("address", ["web", "host:", "::1:80", "1.2.3.4:99999", "host:http"])
def test_bad_http_address_is_one_line_that_names_the_fix(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT; try --http 127.0.0.1:8080"):
        parse_http_address(address)
    args = ["serve", "--source", "x.mp4", "--no-display", "--student", str(tmp_path / "s.onnx"), "--http", address]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "is not HOST:PORT" in result.output and "Traceback" not in result.output
