#!/usr/bin/env bash
# The GPU check as one command for a lent machine (see bench/gpu_check.py): installs the wheels carried in .whl/
# (bench/gpu_wheels.sh downloads them here) into /tmp/igcli-site, then runs the check on CUDA. Arguments pass on.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/igcli-site \
        .whl/*.whl
    export PYTHONPATH="/tmp/igcli-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec timeout 290 python3 bench/gpu_check.py "$@"
