"""Targeted mutation testing: plant one realistic bug at a time and check that the tests notice.

Each mutant is a list of exact source edits (every snippet must occur exactly once in its file: a
snippet that no longer matches stops the run, so the list cannot rot silently) plus the test files
or node ids that should catch it. The runner copies the repository once into a temporary directory
(never touching the working tree), checks that `import adaptor_peft` resolves inside the copy,
runs the unmutated tests once (baseline), then for every mutant restores the pristine files,
applies the edits and runs `python -m pytest -x -q -p no:cacheprovider <tests>` there with a
timeout. The result is a report (killed / survived / timeout per mutant), run outside CI:

    .venv/bin/python scripts/mutate.py --out benchmarks/results/mutation.md
    .venv/bin/python scripts/mutate.py --list
    .venv/bin/python scripts/mutate.py --only metrics-argmin,predict-neighbour-class

Exit status 0 whatever survives; 2 when the harness itself is broken (a snippet not found, the
import not resolving in the copy, the unmutated tests failing). tests/MUTATION_SURVIVORS.md holds
the decision for every survivor.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Not copied: the environment, VCS data, run outputs and caches (the copy must import its own sources).
COPY_EXCLUDE = {
    ".venv",
    ".venv-latest",
    ".venv-lock",
    ".git",
    "runs",
    "outputs",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".gl",
}
# Slow cases left out of every mutant run (they check process plumbing, not the mutated arithmetic).
DESELECT = (
    "tests/train/test_trainer.py::test_two_process_ddp_equals_single_process",
    "tests/kernels/test_adaptor_t_triton.py::test_kernels_lower_for_sm90",
    "tests/kernels/test_scan_triton.py::test_kernels_lower_for_sm90",
)
HARNESS_BROKEN = 2


class HarnessError(RuntimeError):
    """The harness cannot produce a meaningful report (stale snippet, wrong import, red baseline)."""


@dataclass(frozen=True)
class Edit:
    """Replace `old` (which must occur exactly once in `file`) by `new`."""

    file: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutant:
    """One planted bug: its edits, what it means, and the tests expected to catch it."""

    id: str
    edits: tuple[Edit, ...]
    description: str
    tests: tuple[str, ...]

    @property
    def module(self) -> str:
        """The mutated file(s), shortened (adaptor_peft/ dropped)."""
        files = dict.fromkeys(e.file.removeprefix("adaptor_peft/") for e in self.edits)
        return " + ".join(files)


def mutant(
    mid: str, file: str, old: str, new: str, description: str, tests: list[str], *more: Edit
) -> Mutant:
    """A mutant with one edit in `file` (and optionally more edits)."""
    return Mutant(mid, (Edit(file, old, new), *more), description, tuple(tests))


# --------------------------------------------------------------------------------------- test sets
TEMPORAL = "tests/adaptors/test_temporal.py"
AT_ORACLE = "tests/adaptors/test_adaptor_t_oracle.py"
AT_KERNEL = "tests/adaptors/test_adaptor_t_kernel.py"
AT_TRITON = "tests/kernels/test_adaptor_t_triton.py"
ADAPTOR_S = "tests/adaptors/test_adaptor_s.py"
CONFIG = "tests/adaptors/test_config.py"
INJECT = "tests/adaptors/test_inject.py"
REPORT_ORACLE = "tests/adaptors/test_report_oracle.py"
SCAN_TORCH = "tests/kernels/test_scan_torch.py"
SCAN_REF = "tests/kernels/test_scan_ref.py"
PRIMITIVES = "tests/kernels/test_primitives.py"
CROSS = "tests/kernels/test_cross_scan_triton.py"
DISPATCH = "tests/kernels/test_dispatch.py"
SS2D = "tests/models/test_vmamba_ss2d.py"
CONFORMANCE = "tests/models/test_vmamba_conformance.py"
METRICS_ORACLE = "tests/train/test_metrics_oracle.py"
PREDICT_ORACLE = "tests/train/test_predict_oracle.py"
TRAINING_ORACLE = "tests/train/test_training_oracle.py"
TRAINER = "tests/train/test_trainer.py"
TRACKING = "tests/train/test_tracking.py"
DATA = "tests/train/test_data.py"
CLI = "tests/test_cli.py"
BOOSTER = "tests/backbones/test_booster.py"
IO_TOY = "tests/io/test_adaptor_file_toy.py"
IO_VMAMBA = "tests/io/test_adaptor_file_vmamba.py"
BAD_INPUTS = "tests/reliability/test_bad_inputs.py"

T = "adaptor_peft/adaptors/temporal.py"
S = "adaptor_peft/adaptors/spatial.py"
INJ = "adaptor_peft/adaptors/inject.py"
SEL = "adaptor_peft/adaptors/selection.py"
REP = "adaptor_peft/adaptors/report.py"
CFG = "adaptor_peft/adaptors/config.py"
K_AT = "kernels/adaptor_t_torch.py"
K_REF = "kernels/adaptor_t_ref.py"
K_SCAN = "kernels/scan_torch.py"
K_CROSS = "kernels/cross_scan_torch.py"
K_DISP = "kernels/dispatch.py"
MET = "adaptor_peft/train/metrics.py"
INF = "adaptor_peft/train/inference.py"
TRN = "adaptor_peft/train/trainer.py"
BOO = "adaptor_peft/train/booster.py"
IO_READER = "adaptor_peft/io/safetensors_reader.py"
IO_HEADER = "adaptor_peft/io/adaptor_header.py"
IO_FILE = "adaptor_peft/io/adaptor_file.py"
DAT = "adaptor_peft/train/data.py"

# the load path's checks, to single out its checksum test (read_adaptor_file has the same test)
MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- adaptors/temporal.py (Adaptor-T)
    mutant(
        "adaptor-t-softmax-over-heads",
        T,
        "coeffs = torch.softmax(pred[-1], dim=0)",
        "coeffs = torch.softmax(pred[-1], dim=1)",
        "Adaptor-T softmax over the S heads instead of the K points, CPU and Triton paths alike "
        "(the Triton path's softmax sits in temporal._forward_channel_major; the kernel gets the weights)",
        [AT_ORACLE, TEMPORAL],
        Edit(
            T,
            "coeffs = torch.softmax(pred[:, :, -1], dim=3)",
            "coeffs = torch.softmax(pred[:, :, -1], dim=2)",
        ),
    ),
    mutant(
        "adaptor-t-absolute-scale-L",
        T,
        "return raw if self.relative else torch.sigmoid(raw) * (length - 1)",
        "return raw if self.relative else torch.sigmoid(raw) * length",
        "absolute offsets scaled to [0, L] instead of [0, L-1]",
        [AT_ORACLE, TEMPORAL],
    ),
    mutant(
        "adaptor-t-state-mean-sum",
        T,
        "q = q.view(batch * rows, groups, d_inner, n).mean(-1)",
        "q = q.view(batch * rows, groups, d_inner, n).sum(-1)",
        "phi_input='state_mean' sums the states over N instead of averaging (CPU path)",
        [AT_ORACLE, TEMPORAL],
    ),
    mutant(
        "adaptor-t-spread-sign",
        T,
        "sign = torch.where(k % 2 == 0, -1.0, 1.0)",
        "sign = torch.where(k % 2 == 0, 1.0, -1.0)",
        "initial relative offsets mirrored: point 0 looks ahead instead of back",
        [TEMPORAL, AT_ORACLE],
    ),
    mutant(
        "adaptor-t-share-flag-inverted",
        T,
        "groups = 1 if config.share_across_directions else num_directions",
        "groups = num_directions if config.share_across_directions else 1",
        "share_across_directions inverted (per-direction phi when sharing is asked for)",
        [TEMPORAL, REPORT_ORACLE, AT_ORACLE],
    ),
    # ---------------------------------------------------------------- adaptors/spatial.py (Adaptor-S)
    mutant(
        "adaptor-s-padding-ignores-dilation",
        S,
        "padding=r * (k - 1) // 2",
        "padding=(k - 1) // 2",
        "Adaptor-S conv padding ignores the dilation (output shrinks for r > 1)",
        [ADAPTOR_S],
    ),
    mutant(
        "adaptor-s-remainder-to-last",
        S,
        "return [base + (1 if i < extra else 0) for i in range(parts)]",
        "return [base + (1 if i >= parts - extra else 0) for i in range(parts)]",
        "split groups give the remainder channels to the last groups instead of the first",
        [ADAPTOR_S],
    ),
    mutant(
        "adaptor-s-sum-skips-branch",
        S,
        "for conv in self.convs[1:]:",
        "for conv in self.convs[2:]:",
        "'sum' aggregation drops the second dilation branch",
        [ADAPTOR_S],
    ),
    mutant(
        "adaptor-s-replace-init-split",
        S,
        "conv.weight[:, :, c, c] = 1.0 if self.split else 1.0 / len(self.convs)",
        "conv.weight[:, :, c, c] = 1.0 / len(self.convs)",
        "replacement-mode identity init divides the delta by M in 'split' mode too",
        [ADAPTOR_S],
    ),
    # ---------------------------------------------------------------- adaptors/inject.py
    mutant(
        "inject-head-trained-regardless",
        INJ,
        "(config.train_head and is_under(module_name, head_prefixes))",
        "(is_under(module_name, head_prefixes))",
        "train_head=False still trains (and saves) the classifier head",
        [INJECT, REPORT_ORACLE, IO_TOY],
    ),
    mutant(
        "inject-extras-stay-frozen",
        INJ,
        "        for _, param in _trained_extras(model, config):\n            param.requires_grad_(True)",
        "        for _, param in _trained_extras(model, config):\n            param.requires_grad_(False)",
        "freeze_base leaves head/norms/biases frozen although the config trains them",
        [INJECT, REPORT_ORACLE],
    ),
    mutant(
        "inject-state-dict-head-flag",
        INJ,
        "    if not include_head:\n        wanted = {n for n in wanted",
        "    if include_head:\n        wanted = {n for n in wanted",
        "adaptor_state_dict(include_head=...) inverted",
        [INJECT, IO_TOY],
    ),
    mutant(
        "select-stage-range-off-by-one",
        SEL,
        "if not -len(present) <= s < len(present):",
        "if not -len(present) <= s <= len(present):",
        "stage index == number of stages passes the range check (IndexError instead of ValueError)",
        [INJECT],
    ),
    # ---------------------------------------------------------------- adaptors/report.py
    mutant(
        "report-trainable-pct-no-head-numerator",
        REP,
        "return 100.0 * self.trainable_params / max(self.base_params, 1)",
        "return 100.0 * self.trainable_params_no_head / max(self.base_params, 1)",
        "trainable_pct uses the numerator without the head",
        [REPORT_ORACLE, INJECT],
    ),
    mutant(
        "report-base-includes-adaptors",
        REP,
        "base_params=total - adaptor_params,",
        "base_params=total,",
        "base parameter count includes the adaptors",
        [REPORT_ORACLE, INJECT],
    ),
    mutant(
        "report-no-head-wrong-category",
        REP,
        'if cat != "head":',
        'if cat != "norm":',
        "trainable_params_no_head excludes norms instead of the head",
        [REPORT_ORACLE, INJECT],
    ),
    mutant(
        "report-no-head-pct-denominator",
        REP,
        "return 100.0 * self.trainable_params_no_head / max(self.base_params_no_head, 1)",
        "return 100.0 * self.trainable_params_no_head / max(self.base_params, 1)",
        "trainable_pct_no_head divides by the base with its head",
        [REPORT_ORACLE, INJECT],
    ),
    # ---------------------------------------------------------------- adaptors/config.py
    mutant(
        "config-spread-nan-accepted",
        CFG,
        'if not self.offset_init_spread >= 0 or self.offset_init_spread == float("inf"):',
        'if self.offset_init_spread < 0 or self.offset_init_spread == float("inf"):',
        "offset_init_spread=NaN passes validation (comparison written the NaN-blind way)",
        [CONFIG],
    ),
    mutant(
        "config-both-adaptors-off-accepted",
        CFG,
        "if not (self.temporal or self.spatial):",
        "if not (self.temporal and self.spatial):",
        "validation rejects a config with only one adaptor instead of one with none",
        [CONFIG],
    ),
    mutant(
        "config-zero-dilation-accepted",
        CFG,
        "if isinstance(d, bool) or not isinstance(d, int) or d < 1:",
        "if isinstance(d, bool) or not isinstance(d, int) or d < 0:",
        "dilation 0 passes validation",
        [CONFIG],
    ),
    mutant(
        "config-zero-points-accepted",
        CFG,
        '_check_int(self, "num_points", minimum=1)',
        '_check_int(self, "num_points", minimum=0)',
        "num_points=0 passes validation",
        [CONFIG],
    ),
    # ---------------------------------------------------------------- kernels/adaptor_t_torch.py (read-out)
    mutant(
        "readout-upper-tap-past-end",
        K_AT,
        "values[:, :, :, :, 1] = torch.where((lo >= -1) & (lo <= length - 2), upper, zero)",
        "values[:, :, :, :, 1] = torch.where((lo >= -1) & (lo <= length - 1), upper, zero)",
        "upper interpolation tap at position L reads token L-1 instead of zero padding",
        [AT_KERNEL, AT_ORACLE, AT_TRITON],
    ),
    mutant(
        "readout-clamp-to-edge",
        K_AT,
        "pos = torch.nan_to_num(pos, nan=-1.0).clamp(-1.0, float(length))",
        "pos = torch.nan_to_num(pos, nan=-1.0).clamp(0.0, float(length - 1))",
        "positions outside the sequence clamp to the edge token instead of reading zero",
        [AT_KERNEL, AT_ORACLE, AT_TRITON],
    ),
    mutant(
        "readout-lerp-weights-swapped",
        K_AT,
        "upper = wts * frac",
        "upper = wts * (1 - frac)",
        "linear interpolation weights of the two neighbours swapped",
        [AT_KERNEL, AT_ORACLE],
    ),
    mutant(
        "readout-nograd-no-gamma",
        K_AT,
        "read_b = m.view(length, groups * d_inner).mul_(gamma).t()",
        "read_b = m.view(length, groups * d_inner).t()",
        "CPU no-grad fast path forgets the gamma scale",
        [AT_KERNEL, AT_ORACLE, TEMPORAL],
    ),
    mutant(
        "readout-C-mean",
        K_AT,
        "read = (m * C.permute(0, 3, 1, 2)[:, :, :, None, :]).sum(-1)",
        "read = (m * C.permute(0, 3, 1, 2)[:, :, :, None, :]).mean(-1)",
        "read-out through C averages over N instead of summing (N > 1, autograd path)",
        [AT_KERNEL, AT_ORACLE],
    ),
    # ---------------------------------------------------------------- kernels/adaptor_t_ref.py (oracle)
    mutant(
        "ref-valid-upper-bound",
        K_REF,
        "valid = (idx >= 0) & (idx < length)",
        "valid = (idx >= 0) & (idx <= length)",
        "reference lerp treats index L as inside the sequence (reads the clamped last token)",
        [AT_KERNEL, AT_TRITON],
    ),
    mutant(
        "ref-relative-off-by-one",
        K_REF,
        "pos = off[..., k, i] + i if relative else off[..., k, i]",
        "pos = off[..., k, i] + (i + 1) if relative else off[..., k, i]",
        "reference relative positions shifted by one token",
        [AT_KERNEL, AT_TRITON],
    ),
    mutant(
        "ref-no-gamma",
        K_REF,
        "return out * gamma[None, :, None]",
        "return out",
        "reference read-out forgets gamma",
        [AT_KERNEL, AT_TRITON],
    ),
    # ---------------------------------------------------------------- kernels/scan_torch.py
    mutant(
        "scan-entry-state-wrong-chunk-decay",
        K_SCAN,
        "torch.addcmul(end[..., c - 1, :], decay[..., c - 1, :], h_in[..., c - 1, :], out=h_in[..., c, :])",
        "torch.addcmul(end[..., c - 1, :], decay[..., c, :], h_in[..., c - 1, :], out=h_in[..., c, :])",
        "carried state decays with the next chunk's decay instead of the previous one's",
        [SCAN_TORCH, PRIMITIVES],
    ),
    mutant(
        "scan-softplus-no-rounding-fix",
        K_SCAN,
        "return torch.maximum(w.log_().add_(e), z, out=w)",
        "return torch.maximum(w.log_(), z, out=w)",
        "fp32 softplus drops the log1p rounding correction",
        [SCAN_TORCH, PRIMITIVES],
    ),
    mutant(
        "scan-backward-sigmoid-of-dt",
        K_SCAN,
        "ddt.mul_(torch.sigmoid(z))",
        "ddt.mul_(torch.sigmoid(dt))",
        "softplus derivative taken at softplus(z) instead of z",
        [SCAN_TORCH],
    ),
    mutant(
        "scan-backward-carry-decay",
        K_SCAN,
        "q = torch.exp((dt.sum(0) - dt[0]).unsqueeze(-1) * A_b[0])",
        "q = torch.exp(dt.sum(0).unsqueeze(-1) * A_b[0])",
        "reverse-scan carry decays over the whole chunk instead of steps 1..T-1",
        [SCAN_TORCH],
    ),
    mutant(
        "scan-chunk-size-exceeds-length",
        K_SCAN,
        "return max(1, min(t, length))",
        "return max(1, t)",
        "default chunk longer than the sequence (short sequences padded to 32)",
        [SCAN_TORCH],
    ),
    # ---------------------------------------------------------------- kernels/cross_scan_torch.py
    mutant(
        "cross-merge-square-only",
        K_CROSS,
        "return t[:, 0] + t[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)",
        "return t[:, 0] + t[:, 1].reshape(b, d, h * w)",
        "cross-merge adds the column-major directions without transposing back (right only for H=W=1)",
        [PRIMITIVES, CROSS],
    ),
    mutant(
        "cross-scan-no-flip",
        K_CROSS,
        "out[:, 2:].copy_(out[:, :2].flip(-1))",
        "out[:, 2:].copy_(out[:, :2])",
        "reverse scan directions not flipped",
        [PRIMITIVES, CROSS],
    ),
    mutant(
        "cross-scan-channel-last-hw-swapped",
        K_CROSS,
        "x = x.permute(0, 3, 1, 2)",
        "x = x.permute(0, 3, 2, 1)",
        "channel-last input permuted with H and W swapped (right only for square grids)",
        [PRIMITIVES, CROSS, SS2D],
    ),
    # ---------------------------------------------------------------- kernels/dispatch.py
    mutant(
        "dispatch-env-case-sensitive",
        K_DISP,
        'backend, source = env.lower(), f"environment variable {ENV_VAR}"',
        'backend, source = env, f"environment variable {ENV_VAR}"',
        "ADAPTOR_PEFT_SCAN is no longer case-insensitive",
        [DISPATCH],
    ),
    mutant(
        "dispatch-merge-uses-ref",
        K_DISP,
        "        return cross_merge_torch(ys)\n",
        "        return cross_merge_ref(ys)\n",
        "the 'torch' backend's cross_merge runs the reference (same numbers, slower)",
        [DISPATCH, "tests/kernels/test_dispatch_routing.py"],
    ),
    mutant(
        "dispatch-cuda-default-torch",
        K_DISP,
        'backend = "triton" if tensor.is_cuda else "torch"',
        'backend = "torch"',
        "CUDA tensors default to the torch backend instead of Triton",
        [DISPATCH, "tests/kernels/test_dispatch_routing.py"],
    ),
    # ---------------------------------------------------------------- train/metrics.py
    mutant(
        "metrics-argmin",
        MET,
        "preds = logits.argmax(dim=1)",
        "preds = logits.argmin(dim=1)",
        "ClassificationMeter predicts the argmin class",
        [METRICS_ORACLE, TRAINER],
    ),
    mutant(
        "metrics-confusion-transposed",
        MET,
        "index = labels * self.num_classes + preds",
        "index = preds * self.num_classes + labels",
        "confusion matrix rows are predictions, not labels (per-class accuracy wrong)",
        [METRICS_ORACLE, TRAINER],
    ),
    mutant(
        "metrics-top4",
        MET,
        "topk = logits.topk(TOP_K, dim=1).indices",
        "topk = logits.topk(TOP_K - 1, dim=1).indices",
        "top-5 counts only the 4 best classes",
        [METRICS_ORACLE, TRAINER],
    ),
    mutant(
        "metrics-top5-at-five-classes",
        MET,
        "        if self.num_classes > TOP_K:\n            topk",
        "        if self.num_classes >= TOP_K:\n            topk",
        "top-5 counted (always 100%) for exactly 5 classes",
        [METRICS_ORACLE],
        Edit(
            MET,
            "        if self.num_classes > TOP_K:\n            out",
            "        if self.num_classes >= TOP_K:\n            out",
        ),
    ),
    mutant(
        "trainer-eval-interval-floor",
        TRN,
        "return max(1, math.ceil(total_steps / EVAL_POINTS))",
        "return max(1, total_steps // EVAL_POINTS)",
        "the default evaluation interval rounds down (more than 10 points)",
        [TRACKING],
    ),
    mutant(
        "trainer-no-tracker-purge-on-resume",
        TRN,
        '{**writer, "purge_step": self.step + 1} if self.step else writer',
        "writer",
        "a resumed run logs the steps after its checkpoint to TensorBoard twice",
        [TRACKING],
    ),
    mutant(
        "trainer-final-eval-on-subset",
        TRN,
        "if periodic and self.data.periodic_eval_dl is not None:",
        "if self.data.periodic_eval_dl is not None:",
        "the step-0 and final evaluations use the eval_limit subset too",
        [TRACKING],
    ),
    mutant(
        "metrics-loss-not-averaged",
        MET,
        '"loss": self.loss_sum / n,',
        '"loss": self.loss_sum,',
        "reported loss is the sum, not the mean",
        [METRICS_ORACLE, TRAINER],
    ),
    mutant(
        "metrics-absent-class-zero",
        MET,
        "(100.0 * int(c) / int(s)) if int(s) else None",
        "(100.0 * int(c) / int(s)) if int(s) else 0.0",
        "per-class accuracy of an absent class is 0.0 instead of None",
        [METRICS_ORACLE, TRAINER],
    ),
    # ---------------------------------------------------------------- train/inference.py
    mutant(
        "predict-neighbour-class",
        INF,
        '"top": [(trained.classes[i], float(v))',
        '"top": [(trained.classes[(i + 1) % len(trained.classes)], float(v))',
        "predict reports the neighbouring class name",
        [PREDICT_ORACLE, CLI],
    ),
    mutant(
        "predict-softmax-over-batch",
        INF,
        "probs = trained.model(x[None]).float().softmax(dim=1)[0]",
        "probs = trained.model(x[None]).float().softmax(dim=0)[0]",
        "predict's softmax runs over the batch of one (every probability 1.0)",
        [PREDICT_ORACLE, CLI],
    ),
    mutant(
        "eval-with-train-preprocess",
        INF,
        "TransformedDataset(source, Preprocess(trained.recipe, train=False))",
        "TransformedDataset(source, Preprocess(trained.recipe, train=True))",
        "evaluate_dataset preprocesses with the training augmentation",
        [PREDICT_ORACLE, CLI, "tests/train/test_eval_preprocess_oracle.py"],
    ),
    mutant(
        "rebuild-wrong-seed",
        INF,
        "        torch.manual_seed(recipe.seed)\n        model = method.prepare(",
        "        torch.manual_seed(recipe.seed + 1)\n        model = method.prepare(",
        "a rebuilt run seeds the base/head differently from training",
        [PREDICT_ORACLE, CLI],
    ),
    # ---------------------------------------------------------------- train/trainer.py (schedule, groups)
    mutant(
        "lr-schedule-zero",
        TRN,
        "    return factor\n",
        "    return lambda step: 0.0\n",
        "the learning-rate schedule is always 0",
        [TRAINING_ORACLE, TRAINER],
    ),
    mutant(
        "lr-warmup-starts-at-zero",
        TRN,
        "return (step + 1) / (warmup_steps + 1)",
        "return step / (warmup_steps + 1)",
        "warm-up starts at lr 0 (the first optimizer step does nothing)",
        [TRAINING_ORACLE, TRAINER],
    ),
    mutant(
        "lr-cosine-no-floor",
        TRN,
        "return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))",
        "return (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))",
        "cosine schedule ignores the min_lr_ratio floor",
        [TRAINING_ORACLE, TRAINER],
    ),
    mutant(
        "groups-decay-on-norms-biases",
        TRN,
        '"weight_decay": recipe.weight_decay if decay else 0.0,',
        '"weight_decay": recipe.weight_decay,',
        "weight decay applied to norms, biases and 1-D tensors too",
        [TRAINING_ORACLE, TRAINER],
    ),
    mutant(
        "groups-head-lr-ignored",
        TRN,
        '"head": recipe.head_lr if recipe.head_lr is not None else recipe.lr,',
        '"head": recipe.lr,',
        "head_lr is ignored by the plain parameter groups",
        [TRAINING_ORACLE, TRAINER],
    ),
    mutant(
        "groups-base-lr-ignored",
        TRN,
        '"base": recipe.base_lr if recipe.base_lr is not None else recipe.lr,',
        '"base": recipe.lr,',
        "base_lr is ignored by the plain parameter groups (booster without layer_decay)",
        [TRAINING_ORACLE, TRAINER, "tests/train/test_groups_oracle.py"],
    ),
    mutant(
        "train-label-smoothing-ignored",
        TRN,
        "loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)",
        "loss = F.cross_entropy(logits.float(), labels)",
        "label_smoothing is ignored by the training loss",
        [TRAINING_ORACLE, TRAINER, "tests/train/test_smoothing_oracle.py"],
    ),
    mutant(
        "train-clip-grad-ignored",
        TRN,
        'clip = recipe.clip_grad if recipe.clip_grad is not None else float("inf")',
        'clip = float("inf")',
        "clip_grad is ignored",
        [TRAINING_ORACLE, TRAINER],
    ),
    # ---------------------------------------------------------------- booster.py
    mutant(
        "booster-layer-decay-from-bottom",
        BOO,
        "lr = lr * layer_decay ** (layer_max - layer)",
        "lr = lr * layer_decay**layer",
        "layer decay counted from the stem instead of from the top",
        [BOOSTER, TRAINER],
    ),
    mutant(
        "booster-head-defaults-to-adaptor-lr",
        BOO,
        '"head": base_lr if head_lr is None else head_lr}',
        '"head": adaptor_lr if head_lr is None else head_lr}',
        "head defaults to the adaptor lr instead of base_lr",
        [BOOSTER],
    ),
    mutant(
        "booster-decays-gamma",
        BOO,
        '_NO_DECAY_SUFFIXES = (".bias", "_bias", ".gamma", ".static_offsets", ".A_logs", ".Ds", "pos_embed")',
        '_NO_DECAY_SUFFIXES = (".bias", "_bias", ".static_offsets", ".A_logs", ".Ds", "pos_embed")',
        "adaptor gamma scales get weight decay",
        [BOOSTER],
    ),
    mutant(
        "booster-decay-inverted",
        BOO,
        '"weight_decay": 0.0 if nd else weight_decay,',
        '"weight_decay": weight_decay if nd else 0.0,',
        "weight decay on the no-decay group and none on the others",
        [BOOSTER],
    ),
    # ---------------------------------------------------------------- io/ (adaptor files)
    mutant(
        "io-span-check-lower-bound",
        IO_READER,
        "        if end - begin != need:",
        "        if end - begin < need:",
        "a byte span larger than dtype x shape is no longer traced to its tensor (generic error)",
        [IO_TOY],
    ),
    mutant(
        "io-trailing-bytes-unnamed",
        IO_READER,
        "    if pos != body_len:",
        "    if pos > body_len:",
        "trailing bytes after the last tensor no longer reported as such (generic error)",
        [IO_TOY, "tests/io/test_reader_rejections.py"],
    ),
    mutant(
        "io-duplicate-keys-accepted",
        IO_READER,
        "we refuse\n"
        '        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)',
        'we refuse\n        header = json.loads(header_bytes.decode("utf-8"))',
        "a header naming a tensor twice is accepted (the last entry wins, as in safetensors)",
        [IO_TOY, "tests/io/test_reader_rejections.py"],
    ),
    mutant(
        "io-extra-entry-fields-accepted",
        IO_READER,
        "if set(info) != _ENTRY_FIELDS:  # safetensors ignores unknown fields",
        "if not _ENTRY_FIELDS <= set(info):  # safetensors ignores unknown fields",
        "header entries with unknown extra fields are accepted",
        [IO_TOY, "tests/io/test_reader_rejections.py"],
    ),
    mutant(
        "io-digest-skips-tensor-bytes",
        IO_HEADER,
        "        h.update(tensor_bytes(t))\n",
        "",
        "content digest covers names/dtypes/shapes but not the tensor bytes",
        [IO_TOY, IO_VMAMBA],
    ),
    mutant(
        "io-format-version-0-accepted",
        IO_HEADER,
        "if not version_text.isdigit() or int(version_text) not in SUPPORTED_FORMAT_VERSIONS:",
        "if not version_text.isdigit() or int(version_text) > max(SUPPORTED_FORMAT_VERSIONS):",
        "format version 0 (older than any supported) is accepted",
        [IO_TOY, "tests/io/test_reader_rejections.py"],
    ),
    mutant(
        "io-load-skips-checksum",
        IO_FILE,
        "    if content_digest(raw.metadata, tensors) != header.content_sha256:",
        "    if False:",
        "adaptor files are read without verifying the content checksum",
        [IO_TOY, IO_VMAMBA],
    ),
    mutant(
        "io-fingerprint-or",
        IO_FILE,
        'if current["structure"] == stored["structure"] and current["values"] == stored["values"]:',
        'if current["structure"] == stored["structure"] or current["values"] == stored["values"]:',
        "base check passes when only the tensor layout matches (other weights accepted)",
        [IO_TOY, IO_VMAMBA],
    ),
    mutant(
        "io-fingerprint-counts-head",
        IO_FILE,
        "set(trained) | _hook_keys(model))",
        "{k for k in trained if k not in head} | _hook_keys(model))",
        "fingerprint check on load includes the trained head it should skip",
        [IO_TOY, IO_VMAMBA],
    ),
    mutant(
        "io-shape-check-numel-only",
        IO_FILE,
        "        if entry.shape != shape:\n            raise TensorShapeMismatchError(",
        "        if torch.Size(entry.shape).numel() != torch.Size(shape).numel():\n"
        "            raise TensorShapeMismatchError(",
        "tensor shape check compares element counts only (transposed shapes accepted)",
        [IO_TOY, IO_VMAMBA, "tests/io/test_reader_rejections.py"],
    ),
    mutant(
        "io-dtype-check-size-only",
        IO_FILE,
        "if DTYPES[entry.dtype][0] != dtype:",
        "if DTYPES[entry.dtype][1] != torch.empty((), dtype=dtype).element_size():",
        "tensor dtype check compares element sizes only (BF16 accepted for F16, I32 for F32)",
        [IO_TOY, IO_VMAMBA, "tests/io/test_reader_rejections.py"],
    ),
    mutant(
        "io-inf-accepted",
        IO_FILE,
        "        if t.is_floating_point():\n            bad = int((~torch.isfinite(t)).sum())",
        "        if t.is_floating_point():\n            bad = int(torch.isnan(t).sum())",
        "non-finite check on load catches NaN but not Inf",
        [IO_TOY, IO_VMAMBA],
    ),
    # ---------------------------------------------------------------- train/data.py (preprocessing)
    mutant(
        "data-no-255-scaling",
        DAT,
        "x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0",
        "x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()",
        "PIL path normalises 0..255 pixels without dividing by 255",
        [DATA, PREDICT_ORACLE],
    ),
    mutant(
        "data-fast-gray-top-left",
        DAT,
        "top, left = (self.size - h) // 2, (self.size - w) // 2",
        "top, left = 0, 0",
        "fast gray path pads at the top-left instead of centring",
        [DATA, TRAINING_ORACLE],
    ),
    mutant(
        "data-pad-strict-fit",
        DAT,
        'if mode == "pad" and w <= size and h <= size:',
        'if mode == "pad" and w < size and h < size:',
        "an image exactly as wide (or tall) as the target is stretched instead of padded",
        [DATA, PREDICT_ORACLE, "tests/train/test_preprocess_oracle.py"],
    ),
    mutant(
        "data-npz-one-class-short",
        DAT,
        "n_cls = int(labels.max()) + 1 if labels.size else 0",
        "n_cls = int(labels.max()) if labels.size else 0",
        "an .npz without class names gets one class too few (highest label has no name)",
        [DATA, TRAINING_ORACLE, TRAINER],
    ),
    mutant(
        "data-label-range-off-by-one",
        DAT,
        "bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))",
        "bad = np.flatnonzero((self.labels < 0) | (self.labels > num_classes))",
        "label == num_classes passes the head check",
        [DATA, TRAINER],
    ),
    mutant(
        "data-chw-hw-swapped",
        DAT,
        "x = x.transpose(0, 2, 3, 1)  # channel-first -> channel-last",
        "x = x.transpose(0, 3, 2, 1)  # channel-first -> channel-last",
        "(N, C, H, W) arrays converted with H and W swapped (right only for square images)",
        [DATA, "tests/train/test_preprocess_oracle.py"],
    ),
)


# ------------------------------------------------------------------------------------------ runner
def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in COPY_EXCLUDE or n.endswith(".egg-info")}


def make_copy(root: Path) -> Path:
    """Copy the repository (symlinks kept as links) into a fresh temporary directory; return the copy."""
    dest = Path(tempfile.mkdtemp(prefix="adaptor-peft-mutate-")) / "repo"
    shutil.copytree(root, dest, symlinks=True, ignore=_ignore)
    return dest


def check_snippets(root: Path, mutants: tuple[Mutant, ...]) -> None:
    """Every edit's snippet occurs exactly once in its file (HarnessError listing every stale one)."""
    problems = []
    ids = [m.id for m in mutants]
    if len(set(ids)) != len(ids):
        problems.append(f"duplicate mutant ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    for m in mutants:
        for e in m.edits:
            path = root / e.file
            if not path.is_file():
                problems.append(f"{m.id}: {e.file} does not exist")
                continue
            count = path.read_text().count(e.old)
            if count != 1:
                problems.append(f"{m.id}: snippet occurs {count} times in {e.file} (need 1): {e.old!r}")
            if e.old == e.new:
                problems.append(f"{m.id}: edit in {e.file} changes nothing")
    if problems:
        raise HarnessError("stale mutant list:\n  " + "\n  ".join(problems))


def child_env(copy: Path) -> dict[str, str]:
    """Environment for runs in the copy: its sources first on sys.path, no bytecode written."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(copy), env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never meet its mutant's .pyc
    return env


def check_import(python: str, copy: Path) -> None:
    """`import adaptor_peft` (and its kernels symlink) must resolve inside the copy."""
    code = (
        "import adaptor_peft, adaptor_peft.kernels.adaptor_t_torch as k, os; "
        "print(os.path.realpath(adaptor_peft.__file__)); print(os.path.realpath(k.__file__))"
    )
    proc = subprocess.run(
        [python, "-c", code], cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise HarnessError(f"importing adaptor_peft in the copy failed:\n{proc.stderr[-3000:]}")
    real = os.path.realpath(copy)
    for line in proc.stdout.split():
        if not line.startswith(real + os.sep):
            raise HarnessError(f"adaptor_peft resolves outside the copy {real}: {line}")
    print(f"import check: adaptor_peft and its kernels resolve inside {copy}")


def existing_tests(copy: Path, tests: tuple[str, ...], noted: set[str]) -> list[str]:
    """The test paths/node ids whose file exists in the copy; a missing one is noted once and skipped."""
    out = []
    for t in tests:
        if (copy / t.split("::")[0]).exists():
            out.append(t)
        elif t not in noted:
            noted.add(t)
            print(f"note: {t} does not exist in the copy; skipped")
    return out


_FIRST_FAILURE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def run_pytest(python: str, copy: Path, tests: list[str], timeout: float) -> tuple[str, float, str, str]:
    """(status, seconds, first failing id, output tail); status passed / failed / timeout / error."""
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    cmd += [f"--deselect={d}" for d in DESELECT] + tests
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=child_env(copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the children it spawned too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", time.monotonic() - start, "", out[-3000:]
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): take the run's process group down with us
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    seconds = time.monotonic() - start
    match = _FIRST_FAILURE.search(out)
    first = match.group(1) if match else ""
    if proc.returncode == 0:
        return "passed", seconds, first, out[-3000:]
    if proc.returncode in (1, 2, 3, 4):
        # 1 failures, 2 collection/import errors, 3-4 a conftest that no longer imports: all caused by
        # the mutant once the same command passed on the unmutated copy
        return "failed", seconds, first or f"(pytest exit {proc.returncode})", out[-3000:]
    return "error", seconds, first, out[-3000:]  # 5 nothing collected, or killed by a signal


@dataclass
class Result:
    """One mutant's outcome."""

    mutant: Mutant
    status: str  # killed / survived / timeout / no-tests
    seconds: float
    first_failure: str


def apply(copy: Path, m: Mutant, pristine: dict[str, str]) -> None:
    """Write the mutant's edits into the copy (the pristine texts must already be in place)."""
    texts: dict[str, str] = {}
    for e in m.edits:
        text = texts.get(e.file, pristine[e.file])
        if text.count(e.old) != 1:
            raise HarnessError(f"{m.id}: snippet not found exactly once in {e.file} after earlier edits")
        texts[e.file] = text.replace(e.old, e.new)
    for file, text in texts.items():
        (copy / file).write_text(text)


def restore(copy: Path, pristine: dict[str, str]) -> None:
    """Put every pristine file back (a no-op rewrite for files that were not touched is cheap)."""
    for file, text in pristine.items():
        path = copy / file
        if path.read_text() != text:
            path.write_text(text)


def render_table(results: list[Result], markdown: bool) -> str:
    """The result table as aligned text or as a markdown table."""
    head = ("id", "module", "description", "result", "seconds", "first failing test")
    rows = [
        (r.mutant.id, r.mutant.module, r.mutant.description, r.status, f"{r.seconds:.1f}", r.first_failure)
        for r in results
    ]
    if markdown:
        esc = [tuple(c.replace("|", "\\|") for c in row) for row in rows]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for row in esc:
            cells = [f"`{c}`" if i in (0, 5) and c else c for i, c in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    short = [(a, b, c if len(c) <= 60 else c[:57] + "...", d, e, f) for a, b, c, d, e, f in rows]
    widths = [max(len(str(x[i])) for x in [head, *short]) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, short)])


def summary_counts(results: list[Result]) -> dict[str, int]:
    """Number of mutants per status."""
    counts = {"killed": 0, "survived": 0, "timeout": 0, "no-tests": 0}
    for r in results:
        counts[r.status] += 1
    return counts


def write_markdown(path: Path, results: list[Result], wall: float, command: str, python: str) -> None:
    """Write the report atomically (temporary file in the same folder, then rename)."""
    counts = summary_counts(results)
    survivors = [r.mutant.id for r in results if r.status == "survived"]
    text = "\n".join(
        [
            "# Mutation testing report",
            "",
            f"Generated by `scripts/mutate.py` on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
            f"wall time {wall / 60:.1f} min.",
            "",
            f"Command: `{command}` (python: `{python}`)",
            "",
            f"{len(results)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
            f"{counts['timeout']} timed out (counted as killed), {counts['no-tests']} without tests.",
            "",
            "Survivors: " + (", ".join(f"`{s}`" for s in survivors) if survivors else "none") + ". "
            "Decisions: tests/MUTATION_SURVIVORS.md.",
            "",
            render_table(results, markdown=True),
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def select(only: str | None) -> tuple[Mutant, ...]:
    """The mutants named by --only (all when None); an unknown id is a HarnessError."""
    if not only:
        return MUTANTS
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    known = {m.id: m for m in MUTANTS}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise HarnessError(f"unknown mutant id(s) {unknown}; see --list")
    return tuple(known[w] for w in wanted)


def baseline_tests(tests: list[str]) -> list[str]:
    """Union of the selected tests, a node id dropped when its whole file is selected anyway."""
    files = {t for t in tests if "::" not in t}
    out = []
    for t in tests:
        if t not in out and (t in files or t.split("::")[0] not in files):
            out.append(t)
    return out


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutant ids")
    parser.add_argument("--list", action="store_true", help="list the mutants (and check their snippets)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs pytest")
    parser.add_argument("--out", type=Path, help="write the table as markdown to this file")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (for debugging)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # so that the copy is removed and the test run ended
    command = "python scripts/mutate.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        mutants = select(args.only)
        check_snippets(REPO, MUTANTS)  # the whole list, so that --only cannot hide a stale entry
        if args.list:
            for m in mutants:
                print(f"{m.id}\n    {m.module}: {m.description}\n    tests: {' '.join(m.tests)}")
            print(f"{len(mutants)} mutants; every snippet found exactly once")
            return 0
        return run(mutants, args, command)
    except HarnessError as exc:
        print(f"mutate.py: harness broken: {exc}", file=sys.stderr)
        return HARNESS_BROKEN


def run(mutants: tuple[Mutant, ...], args: argparse.Namespace, command: str) -> int:
    """Copy, check, baseline, then every mutant in turn; print (and optionally write) the table."""
    t0 = time.monotonic()
    copy = make_copy(REPO)
    print(f"copy: {copy}")
    try:
        check_snippets(copy, MUTANTS)
        check_import(args.python, copy)
        noted: set[str] = set()
        tests = {m.id: existing_tests(copy, m.tests, noted) for m in mutants}
        union = baseline_tests([t for m in mutants for t in tests[m.id]])
        if union:
            print(f"baseline: {len(union)} test files/ids on the unmutated copy ...", flush=True)
            status, secs, first, tail = run_pytest(args.python, copy, union, args.timeout * 4)
            if status != "passed":
                raise HarnessError(f"baseline {status} after {secs:.0f}s (first: {first or '-'}):\n{tail}")
            print(f"baseline: passed in {secs:.0f}s", flush=True)
        pristine = {e.file: (copy / e.file).read_text() for m in mutants for e in m.edits}
        results: list[Result] = []
        for i, m in enumerate(mutants, 1):
            restore(copy, pristine)
            if not tests[m.id]:
                results.append(Result(m, "no-tests", 0.0, ""))
                print(f"[{i}/{len(mutants)}] {m.id}: no tests exist yet", flush=True)
                continue
            apply(copy, m, pristine)
            status, secs, first, tail = run_pytest(args.python, copy, tests[m.id], args.timeout)
            if status == "error":
                raise HarnessError(f"pytest could not run the tests of {m.id}:\n{tail}")
            verdict = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
            results.append(Result(m, verdict, secs, first))
            print(f"[{i}/{len(mutants)}] {m.id}: {verdict} in {secs:.1f}s {first}", flush=True)
        restore(copy, pristine)
    finally:
        if not args.keep:
            shutil.rmtree(copy.parent, ignore_errors=True)
    wall = time.monotonic() - t0
    counts = summary_counts(results)
    print()
    print(render_table(results, markdown=False))
    print(
        f"\n{len(results)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
        f"{counts['timeout']} timeout, {counts['no-tests']} without tests; wall {wall / 60:.1f} min"
    )
    if args.out is not None:
        write_markdown(args.out, results, wall, command, args.python)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
