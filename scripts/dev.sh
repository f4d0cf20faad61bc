#!/usr/bin/env bash
# One command to set everything up and run the demo or the test suite.
#
#   bash scripts/dev.sh demo [demo flags]    # venv + install + examples/continuous_learning_demo.py
#   bash scripts/dev.sh test [pytest flags]  # venv + install + the whole test suite
#
# Needs only Python 3.11+ and pip. The virtual environment goes to .venv (or $AFS_VENV).
# torch is installed first, pinned (torch==2.13.0), so that the training extra does not pull
# another build; where PyPI's default torch would be a CUDA build, point pip at the CPU wheels:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/dev.sh demo
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-}"
case "$what" in
  demo|test) shift ;;
  *) echo "usage: bash scripts/dev.sh demo|test [args...]" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
VENV="${AFS_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtual environment $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.afs-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing torch==2.13.0, then afs-continuous[train,dev] (first run only)" >&2
  python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
  python -m pip install --quiet --disable-pip-version-check -e ".[train,dev]"
  touch "$stamp"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

case "$what" in
  demo) exec python examples/continuous_learning_demo.py "$@" ;;
  test) exec python -m pytest "$@" ;;
esac
