"""distill.demo: rendered machine-state videos with ground truth, and the whole path run on them.

This package does not hold the stages themselves; `run_demo` calls label, train, export, compare and serve.
"""

from distill.demo.scenes import STATES, Scenario, SceneSpec, Segment, render_scenario, write_segments_csv

__all__ = ["STATES", "Scenario", "SceneSpec", "Segment", "render_scenario", "write_segments_csv"]
