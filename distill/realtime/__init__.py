"""Real-time serving: capture threads, one batched inference thread, smoothing, teacher fallback, sinks.

`run_serve(sources, student, cfg, ...)` is the entry point (`distill serve` calls it). Importing this package
needs OpenCV, numpy and ONNX Runtime only, never torch; a PaliGemma teacher brings torch with it.
"""

import distill.video  # noqa: F401  (first: it sets OpenCV's log level before cv2 loads)

# isort: split
from distill.realtime.fallback import FallbackWorker, Verdict
from distill.realtime.hard_examples import HardExamples
from distill.realtime.serve import DEFAULT_HARD_EXAMPLES, ServeSummary, SourceSummary, run_serve
from distill.realtime.sinks import DisplaySink, EventLog, render_overlay
from distill.realtime.smoothing import Smoother

__all__ = [
    "DEFAULT_HARD_EXAMPLES",
    "DisplaySink",
    "EventLog",
    "FallbackWorker",
    "HardExamples",
    "ServeSummary",
    "Smoother",
    "SourceSummary",
    "Verdict",
    "render_overlay",
    "run_serve",
]
