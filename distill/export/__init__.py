"""distill.export: ONNX export with a parity gate, INT8/FP16 variants, and the torch-free `Student` runtime.

Public names are loaded on first use, so `from distill.export import Student` imports ONNX Runtime, numpy
and OpenCV only; `export_onnx` brings in torch when it is called.

| name | module | needs torch |
| --- | --- | --- |
| `Student`, `Prediction`, `default_providers` | runtime | no |
| `Preprocessor` | preprocess | no |
| `read_metadata`, `write_metadata`, `StudentMeta`, `FORMAT` | metadata (`StudentMeta` is `distill.train.meta`'s) | no |
| `ExportReport`, `VariantReport` | report | no |
| `export_onnx` | onnx_export | yes (imported inside) |
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.export.metadata import FORMAT, StudentMeta, read_metadata, write_metadata
    from distill.export.onnx_export import export_onnx
    from distill.export.preprocess import Preprocessor
    from distill.export.report import ExportReport, VariantReport
    from distill.export.runtime import Prediction, Student, default_providers

_WHERE = {
    "Student": "runtime",
    "Prediction": "runtime",
    "default_providers": "runtime",
    "Preprocessor": "preprocess",
    "read_metadata": "metadata",
    "write_metadata": "metadata",
    "StudentMeta": "metadata",
    "FORMAT": "metadata",
    "ExportReport": "report",
    "VariantReport": "report",
    "export_onnx": "onnx_export",
}

__all__ = [
    "FORMAT",
    "ExportReport",
    "Prediction",
    "Preprocessor",
    "Student",
    "StudentMeta",
    "VariantReport",
    "default_providers",
    "export_onnx",
    "read_metadata",
    "write_metadata",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'distill.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"distill.export.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
