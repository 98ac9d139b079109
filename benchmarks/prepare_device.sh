#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_check.sh needs on a lent GPU machine (which has no
# network and its own torch/triton/peft/timm): wheels of the peft and timm versions installed here in
# .whl/, and the official-VMamba conformance data (../shared/conformance, which does not travel) in
# .carry/. Both folders are git-ignored through .git/info/exclude. Then run on the device, carrying
# [".whl", ".carry"], the command this script prints.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

for d in /.whl/ /.carry/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
done
versions=$("$PY" -c "import peft, timm; print(f'peft=={peft.__version__} timm=={timm.__version__}')")
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl $versions
rm -rf .carry && mkdir -p .carry
cp -r ../shared/conformance .carry/
echo "prepared: $(ls .whl | tr '\n' ' ')+ .carry/conformance ($(du -sh .carry | cut -f1))"
cat <<'EOF'
device command (carry [".whl", ".carry"], timeout_s ~540; GPU_CHECK_ONLY="step ..." for a rerun):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; mkdir -p ../shared && cp -r .carry/conformance ../shared/; R=$OUT; OUT=/tmp/gc GPU_CHECK_BUDGET_S=450 PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh; rc=$?; tar czf $R/gpu_logs.tgz -C /tmp gc; exit $rc
EOF
