#!/usr/bin/env bash
# One short check (< 8 min) for a lent GPU machine, most important first: Triton kernel tests on CUDA
# (the L=1 backward and the scan's dB/dC atomics included), the whole-model table (benchmarks/model_step.py:
# full fine-tuning, Mamba-Adaptor and LoRA r=8 steps and forwards of vmamba_tiny_s1l8 at batch 64, 224x224,
# fp32 and bf16 autocast, time and peak memory, issue 17's acceptance lines), the scan at stage-1 shape
# (B=64, 4D=768, L=3136, N=1 and 16: GB/s and % of peak with the bytes model below), a Triton-vs-reference
# correctness table at real VMamba shapes, the fused Adaptor-T read-out, the scan at B=2 with every
# backend, a cross-scan/merge timing, then a compact summary table.
#
# Usage (repo root or anywhere):  bash benchmarks/gpu_check.sh   (benchmarks/prepare_device.sh first, on the
# machine that calls the device tool: it stages pinned wheels + conformance data and prints the command)
# Assumes a python with torch + triton + pytest + safetensors already installed; installs this repo
# with --no-deps --no-build-isolation (no network needed), or, if that fails, puts a symlink shim of
# the package on PYTHONPATH. Logs go to $OUT (if set) or a temp dir.
# Env: PYTHON (default python3); GPU_CHECK_SKIP_INSTALL=1 (package already importable); PEAK_GBS
# (device peak bandwidth for the % column); GPU_CHECK_BUDGET_S (total wall budget, default 450 s:
# a step that would start past it is skipped, and each step's timeout is cut to what is left);
# GPU_CHECK_ONLY="step step ..." runs only the named steps (e.g. a rerun after a fix);
# GPU_CHECK_CPU_DRY_RUN=1 runs the script on a machine without a GPU, with tiny CPU shapes for the
# whole-model table and the scan and without the Triton steps: it checks the script and its summary, no figure.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
LOG_DIR="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$LOG_DIR"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
SUMMARY="$LOG_DIR/summary.txt"
: >"$SUMMARY"
START=$SECONDS

# run_step NAME TIMEOUT_S CMD...: runs with a timeout, logs to $LOG_DIR/NAME.log, never aborts the
# script, records "NAME status seconds" for the summary table.
run_step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    return 0
  fi
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then
    printf '%-14s %-22s %6s\n' "$name" "skipped(budget)" "-" >>"$SUMMARY"
    echo "== $name: skipped, time budget used up"
    return 0
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  echo "== $name (timeout ${limit}s)"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$LOG_DIR/$name.log" 2>&1 || rc=$?
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT(${limit}s)"; elif [ "$rc" -ne 0 ]; then status="FAIL(rc=$rc)"; fi
  printf '%-14s %-22s %6s\n' "$name" "$status" "$((SECONDS - t0))s" >>"$SUMMARY"
  tail -n "${TAIL_LINES:-25}" "$LOG_DIR/$name.log" || true
  return 0
}

echo "# gpu_check: logs in $LOG_DIR"
DRY="${GPU_CHECK_CPU_DRY_RUN:-}"
DEV=cuda
if [ -n "$DRY" ]; then
  DEV=cpu
  GPU_CHECK_ONLY="${GPU_CHECK_ONLY:-env model_table scan_stage1}"
  GPU_CHECK_SKIP_INSTALL=1
  echo "# CPU dry run: steps $GPU_CHECK_ONLY with tiny shapes (no figure here is a GPU figure)"
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
  exit 2
fi
GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu (dry run)')")
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv,noheader \
    >"$LOG_DIR/gpu.txt" 2>&1 || true
  cat "$LOG_DIR/gpu.txt"
fi
case "$GPU_NAME" in
  *H200*) PEAK_DEFAULT=4800 ;;
  *H100*PCIe*) PEAK_DEFAULT=2000 ;;
  *H100*) PEAK_DEFAULT=3350 ;;
  *A100*80GB*) PEAK_DEFAULT=2039 ;;
  *A100*) PEAK_DEFAULT=1555 ;;
  *) PEAK_DEFAULT=2000 ;;
esac
PEAK="${PEAK_GBS:-$PEAK_DEFAULT}"
echo "# peak bandwidth used for %: ${PEAK} GB/s"

TAIL_LINES=3 run_step env 60 "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'triton', triton.__version__, 'gpu', '$GPU_NAME')"
if [ -z "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
  TAIL_LINES=3 run_step install 90 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
if ! "$PY" -c "import adaptor_peft.kernels.dispatch" >/dev/null 2>&1; then
  # Not installed: a plain checkout imports as it is (adaptor_peft/kernels links to kernels/).
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "# adaptor_peft not installed: importing from the checkout ($PWD)"
fi
# The conformance vectors travel with the checkout (tests/data/conformance).
KSEL=()

# Kernel tests on CUDA (conftest leaves TRITON_INTERPRET unset when CUDA is present).
TAIL_LINES=15 run_step triton_tests 150 "$PY" -m pytest -q -p no:cacheprovider -rfE --durations=5 \
  ${KSEL[@]+"${KSEL[@]}"} tests/kernels/test_scan_triton.py tests/kernels/test_cross_scan_triton.py \
  tests/kernels/test_adaptor_t_triton.py tests/kernels/test_dispatch.py \
  tests/adaptors/test_temporal.py::test_triton_path_equals_torch_path \
  tests/adaptors/test_inject.py::test_injected_model_on_the_triton_backend_matches_torch
# The whole model (issue 17 item 5): full FT / adaptor / LoRA r=8 steps and forwards, fp32 and bf16.
MODEL_ARGS=(--device cuda)
if [ -n "$DRY" ]; then MODEL_ARGS=(--device cpu --tiny --precisions fp32 bf16); fi
TAIL_LINES=20 run_step model_table 170 "$PY" benchmarks/model_step.py "${MODEL_ARGS[@]}" \
  --json "$LOG_DIR/model_step.json"

# The scan at stage-1 shape (B=64, 4D=768, L=3136), N=1 and 16, GPU kernels only (the reference and the
# torch path are far too slow there); bytes model in benchmarks/scan.py bytes_model (docs/scan.md s. 5).
GPU_BACKENDS="triton"
if "$PY" -c "import mamba_ssm.ops.selective_scan_interface" >/dev/null 2>&1; then GPU_BACKENDS="triton mamba_ssm"; fi
SCAN1_ARGS=(--device cuda --batch 64 --stages 1 --repeats 10)
if [ -n "$DRY" ]; then GPU_BACKENDS="torch"; SCAN1_ARGS=(--device cpu --batch 1 --stages 4 --repeats 1 --bandwidth); fi
# shellcheck disable=SC2086
TAIL_LINES=12 run_step scan_stage1 80 "$PY" benchmarks/scan.py "${SCAN1_ARGS[@]}" --n 1 16 --ssm-ratio 2.0 \
  --peak-gbs "$PEAK" --backends $GPU_BACKENDS --json "$LOG_DIR/scan_stage1.json"

# Triton vs the sequential reference (fp64) at real shapes: forward error and gradient errors.
TAIL_LINES=12 run_step correctness 75 "$PY" - <<'PYEOF'
import math, torch
from adaptor_peft.kernels.scan_ref import selective_scan_ref
from adaptor_peft.kernels.scan_triton import selective_scan_triton
import adaptor_peft.kernels.scan_triton as st

def inputs(b, kd, L, n, dtype=torch.float32, g=4):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(b, kd, L, generator=gen); d = 0.5 * torch.randn(b, kd, L, generator=gen)
    A = -(torch.rand(kd, n, generator=gen) + 0.5) * torch.arange(1, n + 1)
    B = torch.randn(b, g, n, L, generator=gen); C = torch.randn(b, g, n, L, generator=gen)
    D = torch.randn(kd, generator=gen)
    dt0 = torch.exp(torch.rand(kd, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt0 + torch.log(-torch.expm1(-dt0))
    return [t.cuda() for t in (u, d, A, B, C, D, bias)]

print(f"{'shape (B,4D,L,N)':>22} {'native_rev':>10} {'fwd err/scale':>13} {'max grad rel':>12} {'worst':>6}")
names = ("u", "delta", "A", "B", "C", "D", "bias")
for (b, kd, L, n) in [(2, 768, 3136, 1), (1, 384, 3136, 16), (2, 192, 49, 16), (1, 96, 785, 1)]:
    x = inputs(b, kd, L, n)
    ref_in = [t.double().requires_grad_() for t in x]
    yr, hr = selective_scan_ref(*ref_in, delta_softplus=True, return_states=True)
    gy = torch.randn_like(yr); gh = torch.randn_like(hr) * 0.1
    gr = torch.autograd.grad((yr * gy).sum() + (hr * gh).sum(), ref_in)
    for native in (False, True):
        st.NATIVE_REVERSE = native
        leaves = [t.clone().requires_grad_() for t in x]
        y, hs = selective_scan_triton(*leaves, delta_softplus=True, return_states=True)
        fe = ((y.double() - yr).abs().max() / yr.abs().max().clamp_min(1)).item()
        gt = torch.autograd.grad((y * gy).sum() + (hs * gh).sum(), leaves)
        errs = [((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(gt, gr)]
        k = max(range(7), key=lambda i: errs[i])
        ok = "OK" if fe < 1e-5 and max(errs) < 1e-4 else "BAD"
        print(f"{str((b, kd, L, n)):>22} {str(native):>10} {fe:13.2e} {max(errs):12.2e} {names[k]:>6} {ok}", flush=True)
PYEOF

# The fused Adaptor-T read-out kernel vs the torch path (embedding_bag) at VMamba-T stage shapes.
TAIL_LINES=14 run_step adaptor_kernel 60 "$PY" benchmarks/adaptor_t_kernel.py

# Scan benchmark (benchmarks/scan.py) at B=2, every stage, with every backend (the torch path
# materialises (B, 4D, N, L) tensors, tens of GB at N=16 and B=64: hence B=64 above has GPU kernels only).
# shellcheck disable=SC2086
TAIL_LINES=40 run_step scan_bench_b2 100 "$PY" benchmarks/scan.py --device cuda --batch 2 --n 1 16 \
  --ssm-ratio 2.0 --repeats 10 --peak-gbs "$PEAK" --backends torch $GPU_BACKENDS --json "$LOG_DIR/scan_b2.json"

TAIL_LINES=8 run_step cross_bench 40 "$PY" - <<'PYEOF'
import torch
from adaptor_peft.kernels.cross_scan_ref import cross_merge_ref, cross_scan_ref
from adaptor_peft.kernels.cross_scan_triton import cross_merge_triton, cross_scan_triton

def bench(fn, reps=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / reps

print(f"{'shape (B,D,H,W)':>20} {'op':>6} {'triton ms':>10} {'torch ms':>9} {'GB/s':>7} {'exact':>6}")
for shape in [(64, 192, 56, 56), (64, 384, 28, 28), (64, 768, 14, 14)]:
    x = torch.randn(*shape, device="cuda")
    ys = torch.randn(shape[0], 4, *shape[1:], device="cuda")
    nbytes = x.numel() * 4 * 5  # read 1x, write 4x (scan) / read 4x, write 1x (merge)
    for op, tri, ref, arg in (("scan", cross_scan_triton, cross_scan_ref, x), ("merge", cross_merge_triton, cross_merge_ref, ys)):
        tt, tr = bench(lambda: tri(arg)), bench(lambda: ref(arg))
        print(f"{str(shape):>20} {op:>6} {tt:10.3f} {tr:9.3f} {nbytes / tt / 1e6:7.0f} {str(torch.equal(tri(arg), ref(arg))):>6}")
PYEOF

# The rest of tests/kernels (torch path, dispatch) last: useful, but not what needs the GPU.
TAIL_LINES=8 run_step other_kernel_tests 60 "$PY" -m pytest -q -p no:cacheprovider -rfE ${KSEL[@]+"${KSEL[@]}"} tests/kernels \
  --ignore=tests/kernels/test_scan_triton.py --ignore=tests/kernels/test_cross_scan_triton.py \
  --ignore=tests/kernels/test_adaptor_t_triton.py --ignore=tests/kernels/test_dispatch.py

echo
echo "# gpu_check summary ($GPU_NAME, peak ${PEAK} GB/s, total $((SECONDS - START))s; logs: $LOG_DIR)"
printf '%-14s %-22s %6s\n' step status time
cat "$SUMMARY"
for f in correctness cross_bench adaptor_kernel; do
  if [ -s "$LOG_DIR/$f.log" ]; then echo "--- $f"; grep -v '^$' "$LOG_DIR/$f.log" | tail -n 12; fi
done
if [ -s "$LOG_DIR/model_table.log" ]; then
  echo "--- model_table (benchmarks/model_step.py)"
  grep -E '^# |^(fp32|bf16)' "$LOG_DIR/model_table.log" || true
fi
if [ -s "$LOG_DIR/scan_stage1.json" ]; then
  echo "--- scan at stage-1 shape: fwd+bwd % of peak ${PEAK} GB/s (targets: N=1 >= 40%, N=16 >= 20%)"
  PEAK="$PEAK" "$PY" - "$LOG_DIR/scan_stage1.json" <<'PYEOF' || true
import json, os, sys
sys.path.insert(0, "benchmarks")
from scan import bytes_model
peak = float(os.environ["PEAK"])
print("bytes model (fp32 inputs, E = B*4D*L, BC = B*4*N*L*4): fwd 2*4E + 4E + 2*BC (read u, delta, B, C;")
print("  write y), bwd 2*4E + 4E + 2*4E + 4*BC (read u, delta, dy, B, C; write du, ddelta, dB, dC)")
for row in json.load(open(sys.argv[1]))["rows"]:
    s = row["shape"]
    shape = (s["B"], s["KD"], s["L"], s["N"])
    fwd, fb = bytes_model(*shape, 4)
    if not row.get("fwdbwd"):
        print(f"{str(shape):>24} {row['backend']:>9} {row.get('note', 'no fwd+bwd time')}")
        continue
    pct = 100 * fb / row["fwdbwd"] / 1e9 / peak
    target = 40 if s["N"] == 1 else 20
    verdict = "PASS" if pct >= target else "FAIL"
    print(f"{str(shape):>24} {row['backend']:>9} fwd {1e3 * row['fwd']:8.3f} ms {100 * fwd / row['fwd'] / 1e9 / peak:5.1f}%"
          f"  fwd+bwd {1e3 * row['fwdbwd']:8.3f} ms {pct:5.1f}% (target {target}%: {verdict})")
PYEOF
fi
for f in scan_bench_b2; do
  if [ -s "$LOG_DIR/$f.log" ]; then
    echo "--- $f (all rows: $LOG_DIR/$f.log)"
    grep -E '^ *B |^ *[0-9]+ ' "$LOG_DIR/$f.log" || true
  fi
done
if grep -qE 'FAIL|TIMEOUT' "$SUMMARY"; then exit 1; fi
exit 0
