"""Helpers of the reliability suite: a tiny recipe, run comparisons, run-dir hygiene checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from toy import TINY_VMAMBA

import adaptor_peft.train.trainer as trainer_mod
from adaptor_peft.train.checkpointing import CKPT_DIR, verify_checkpoint
from adaptor_peft.train.recipes import Recipe, load_recipe

TIME_KEYS = {"samples_per_s", "time_s"}
#: What a run directory may hold (besides checkpoints/step_* folders); anything else is a leftover.
RUN_FILES = {
    "metrics.jsonl", "eval.jsonl", "recipe.yaml", "result.json", "final_eval.json", "curves.png",
    "adaptor.safetensors", "head.safetensors", "model.safetensors", CKPT_DIR,
    "run.lock",  # left by a killed run (its flock died with it); removed when a run ends
}  # fmt: skip
CKPT_FILES = {
    "trainable.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "state.json",
    "manifest.json",
    "rng_rank0.pt",
}


def recipe_dict(toy_data, out: Path, **over) -> dict:
    """The tiny adaptor run used throughout (16x16 input, batch 8, a checkpoint every step)."""
    base = dict(
        model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2, "dilations": [1, 2]},
        train_data=str(toy_data[0]), eval_data=str(toy_data[1]), img_size=16, batch_size=8, max_steps=6,
        lr=0.01, warmup_steps=2, weight_decay=0.01, log_every=2, eval_every=3, save_every=1,
        keep_checkpoints=3, progress=False, plot=False, seed=0, output_dir=str(out),
    )  # fmt: skip
    base.update(over)
    return base


def make_recipe(toy_data, out: Path, **over) -> Recipe:
    """recipe_dict as a validated Recipe."""
    return load_recipe(recipe_dict(toy_data, out, **over))


def rows(path: Path) -> list[dict]:
    """JSONL rows without the wall-clock fields."""
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIME_KEYS}
        for line in path.read_text().splitlines()
    ]


def assert_same_run(out: Path, ref: Path) -> None:
    """Same final trainable tensors (bit-exact), adaptor file tensors, logs and final metrics."""
    from safetensors.torch import load_file

    from adaptor_peft.train.trainer import final_tensors

    a, b = final_tensors(out), final_tensors(ref)
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    fa, fb = load_file(str(out / "adaptor.safetensors")), load_file(str(ref / "adaptor.safetensors"))
    assert sorted(fa) == sorted(fb)
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], atol=0, rtol=0, msg=k)
    assert rows(out / "metrics.jsonl") == rows(ref / "metrics.jsonl")
    assert rows(out / "eval.jsonl") == rows(ref / "eval.jsonl")
    assert json.loads((out / "final_eval.json").read_text()) == json.loads(
        (ref / "final_eval.json").read_text()
    )


def assert_clean_run_dir(run_dir: Path) -> list[str]:
    """No temp/partial files anywhere in the run dir, and every checkpoint folder is complete."""
    listing = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    leftovers = [
        name for name in listing
        if Path(name).name.endswith(".tmp") or Path(name).name.startswith((".tmp", "tmp"))
    ]  # fmt: skip
    assert not leftovers, f"temp/partial files left in {run_dir}: {leftovers}"
    unknown = [p.name for p in run_dir.iterdir() if p.name not in RUN_FILES]
    assert not unknown, f"unexpected entries in {run_dir}: {unknown} (all: {listing})"
    ckpt_root = run_dir / CKPT_DIR
    if ckpt_root.is_dir():
        for entry in ckpt_root.iterdir():
            if entry.name == "latest":
                assert (ckpt_root / entry.read_text().strip()).is_dir(), (
                    f"latest names a missing folder: {entry}"
                )
                continue
            assert entry.name.startswith("step_") and entry.is_dir(), f"unexpected {entry} in {ckpt_root}"
            assert {p.name for p in entry.iterdir()} == CKPT_FILES, f"{entry}: {sorted(os.listdir(entry))}"
            verify_checkpoint(entry)
    return listing


class Killed(Exception):
    """Stands in for the process dying right after a checkpoint (in-process, fast)."""


def die_after_checkpoint(monkeypatch, at_step: int) -> None:
    """Make the trainer raise Killed right after it has written the checkpoint of `at_step`."""
    real = trainer_mod.save_checkpoint

    def save_then_die(accelerator, run_dir, step, *args, **kwargs):
        path = real(accelerator, run_dir, step, *args, **kwargs)
        if step == at_step:
            raise Killed
        return path

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_die)


# ---------------------------------------------------------------------------------- capped child processes
CHILD_CAP_BYTES = 4 << 30  # torch + peft take ~1 GB of address space; a hostile input wants far more
CHILD_TIMEOUT_S = 180

_CHILD_PRELUDE = """
import json, resource, sys, time, warnings
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
sys.path.insert(0, {tests!r})
"""
_CHILD_RUN = """
def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
_out = {}
for _name, _call in CASES.items():
    _before, _t0, _exc, _value = _rss_mb(), time.perf_counter(), None, None
    with warnings.catch_warnings(record=True) as _caught:
        warnings.simplefilter("always")
        try:
            _value = _call()
        except Exception as exc:
            _exc = exc
    _out[_name] = dict(
        exc=type(_exc).__name__ if _exc else None,
        bases=[c.__name__ for c in type(_exc).__mro__] if _exc else [],
        msg=str(_exc) if _exc else "",
        seconds=time.perf_counter() - _t0,
        growth_mb=_rss_mb() - _before,
        warnings=[str(w.message) for w in _caught],
        value=_value if isinstance(_value, (bool, int, float, str, list, dict, type(None))) else repr(_value),
    )
print("RESULT " + json.dumps(_out))
"""


def run_capped_cases(code: str, cwd: Path) -> dict[str, dict]:
    """Run ``code`` (it builds what it needs and defines ``CASES``: name -> zero-argument callable) in a
    fresh interpreter under an address-space cap and a timeout; per case: the exception (name, bases,
    message), seconds, growth of peak RSS in MB, the warnings and the returned value."""
    tests = str(Path(__file__).resolve().parents[1])
    program = _CHILD_PRELUDE.format(cap=CHILD_CAP_BYTES, tests=tests) + code + _CHILD_RUN
    return child_result([sys.executable, "-c", program], cwd, CHILD_TIMEOUT_S)


def child_result(argv: list[str], cwd: Path, timeout: float) -> dict:
    """Run a child Python that prints ``RESULT <json>`` lines; the last one, decoded (assert: one exists).

    One thread and few malloc arenas, so an address-space cap set inside the child does not depend on
    the core count; the repository first on the path; no GPU.
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    tail = f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert lines, f"child reported nothing (rc {done.returncode}):\n{tail}"
    return json.loads(lines[-1][len("RESULT ") :])


def assert_named_refusal(
    result: dict, exc: str, *words: str, seconds: float = 10.0, growth_mb: float = 200.0
) -> None:
    """``exc`` (or a subclass) with a one-line message naming ``words``, fast and without a memory spike."""
    assert exc in result["bases"], result
    for w in words:
        assert w in result["msg"], (w, result)
    assert "\n" not in result["msg"], result
    assert result["seconds"] < seconds, result
    assert result["growth_mb"] < growth_mb, result
