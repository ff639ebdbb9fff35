#!/usr/bin/env bash
# One entry point for a fresh machine:
#
#   bash run.sh demo [ada-hf demo options]   # offline demo in the terminal: generate under several latency budgets
#   bash run.sh web [MODEL] [--port N]       # the local web demo (ada-hf demo): ask about an image under a budget
#   bash run.sh test [pytest options]        # the test suite (what CI runs, through .ci/run)
#
# Both create .venv with python3 (>= 3.10) if it is missing, or reuse it, install torch==2.13.0 first unless that
# version is already there, then `pip install -e '.[test,eval]'` and lmms-eval without its dependencies (skipped
# while pyproject.toml is unchanged since the last install into this .venv), then run the command. Safe to run
# again: nothing is reinstalled that is already right.
#
# Environment (all optional):
#   PYTHON                  interpreter that creates .venv (default: the first of python3, python3.13 ... python3.10)
#   ADA_HF_VENV             where the virtual environment lives (default: .venv in the repository root)
#   ADA_HF_TORCH_PIP_ARGS   extra pip options for the torch install only, e.g. an index of CPU-only wheels: from the
#                           plain index, torch for Linux pulls several GB of CUDA packages.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

TORCH_VERSION="2.13.0"
LMMS_EVAL_VERSION="0.7.3"  # the version the lmms-eval plugin (ada_hf/lmms_eval_plugin.py) is tested with
VENV="${ADA_HF_VENV:-$ROOT/.venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

log() { echo "run.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: bash run.sh demo [ada-hf demo options]    run the offline demo in the terminal (see: bash run.sh demo --help)
       bash run.sh web [MODEL] [--port N]        start the local web demo (ada-hf demo) on 127.0.0.1
       bash run.sh test [pytest options]         run the test suite (pytest -q; slow tests are skipped by default)
EOF
}

# The version check every interpreter must pass: Python >= 3.10.
PY_OK='import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c "$PY_OK" 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    die "no Python >= 3.10 found (tried \$PYTHON, python3, python3.13 ... python3.10); set PYTHON=/path/to/python3"
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        [ ! -e "$VENV" ] || die "$VENV exists but has no bin/python; remove it and run again"
        local python
        python="$(find_python)"
        log "creating $VENV with $python ($("$python" --version 2>&1))"
        "$python" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
    PY="$VENV/bin/python"
    "$PY" -c "$PY_OK" 2>/dev/null || die "$VENV uses $("$PY" --version 2>&1), but ada-hf needs Python >= 3.10; remove $VENV and run again"
    "$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip -q >/dev/null 2>&1 || die "$VENV has no pip"
    # Editable installs from pyproject.toml alone need pip >= 21.3.
    if ! "$PY" -c 'import sys, pip; sys.exit(0 if tuple(map(int, pip.__version__.split(".")[:2])) >= (21, 3) else 1)'; then
        log "upgrading pip"
        "$PY" -m pip install -q --upgrade pip
    fi
}

ensure_torch() {
    local found
    found="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)"
    if [ "$found" = "$TORCH_VERSION" ]; then
        return 0
    fi
    log "installing torch==$TORCH_VERSION${found:+ (found $found)}"
    # shellcheck disable=SC2086  # ADA_HF_TORCH_PIP_ARGS is a list of options
    "$PY" -m pip install -q "torch==$TORCH_VERSION" ${ADA_HF_TORCH_PIP_ARGS:-}
}

ensure_package() {
    local stamp="$VENV/.ada-hf-install-stamp" want
    want="$(cd "$ROOT" && "$PY" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.argv[1])' "$ROOT")"
    # -I: ignore the working directory and PYTHONPATH, so this sees what is installed, not the checkout.
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -I -c '
import importlib.util, os, sys
spec = importlib.util.find_spec("ada_hf")
ok = spec is not None and os.path.realpath(os.path.dirname(spec.origin)) == os.path.realpath(os.path.join(sys.argv[1], "ada_hf"))
sys.exit(0 if ok and all(importlib.util.find_spec(m) for m in ("pytest", "peft", "transformers", "lmms_eval")) else 1)
' "$ROOT" 2>/dev/null; then
        return 0
    fi
    log "installing ada-hf (editable) with its test and eval extras, and lmms-eval==$LMMS_EVAL_VERSION"
    "$PY" -m pip install -q -e "${ROOT}[test,eval]"
    # Without its dependencies: lmms-eval hard-requires torchvision and other heavy packages the plugin never uses;
    # the eval extra holds the few its model API, task loading and evaluator import (README, lmms-eval section).
    "$PY" -m pip install -q --no-deps "lmms-eval==$LMMS_EVAL_VERSION"
    echo "$want" >"$stamp"
}

setup() {
    ensure_venv
    ensure_torch
    ensure_package
}

command="${1:-}"
[ $# -eq 0 ] || shift
case "$command" in
    demo)
        setup
        exec "$VENV/bin/ada-hf" demo --text "$@"
        ;;
    web)
        setup
        exec "$VENV/bin/ada-hf" demo "$@"
        ;;
    test)
        setup
        status=0
        "$PY" -m pytest -q "$@" || status=$?
        if [ "$status" -eq 5 ]; then
            log "error: pytest collected no tests (exit code 5)"
            exit 1
        fi
        exit "$status"
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        [ -z "$command" ] || log "error: unknown command '$command'"
        exit 2
        ;;
esac
