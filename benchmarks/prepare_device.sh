#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_check.sh needs on a lent GPU machine (which has no
# network and its own torch/triton/peft/timm): wheels of the peft and timm versions installed here in
# .whl/ (git-ignored). The conformance data travels with the checkout (tests/data/conformance). Then
# run on the device, carrying [".whl"], the command this script prints.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

versions=$("$PY" -c "import peft, timm; print(f'peft=={peft.__version__} timm=={timm.__version__}')")
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl $versions
echo "prepared: $(ls .whl | tr '\n' ' ')"
cat <<'EOF'
device command (carry [".whl"], timeout_s ~540; GPU_CHECK_ONLY="step ..." for a rerun):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; R=$OUT; OUT=/tmp/gc GPU_CHECK_BUDGET_S=450 PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh; rc=$?; tar czf $R/gpu_logs.tgz -C /tmp gc; exit $rc
EOF
