"""FSDP (recipes/accelerate/fsdp.yaml) with a frozen base and trainable adaptors == one process.

accelerate 1.15 never turns FSDP on for CPUs (adaptor_peft/train/sharding.py says where), while torch's
FSDP2 runs on gloo: the 2-process test forces accelerate's FSDP path inside its workers, so the trainer's
FSDP code (gathered checkpoints and adaptor file) runs here exactly as it does on GPUs. An unforced CPU
launch that asks for FSDP stops with FSDPUnavailableError instead of silently training with DDP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from toy import TINY_VMAMBA

from adaptor_peft.train.recipes import load_recipe
from adaptor_peft.train.sharding import FSDPUnavailableError
from adaptor_peft.train.trainer import final_tensors, train

REPO = Path(__file__).resolve().parents[2]


def _recipe(toy_data, out, **over):
    base = dict(
        model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2, "dilations": [1, 2]},
        train_data=str(toy_data[0]), eval_data=str(toy_data[1]), img_size=16, batch_size=8, max_steps=6,
        lr=0.01, warmup_steps=2, weight_decay=0.01, log_every=2, save_every=3, progress=False, plot=False,
        seed=0, keep_checkpoints=3, output_dir=str(out),
    )  # fmt: skip
    base.update(over)
    return load_recipe(base)


def fsdp_env_from_config(path: Path) -> dict[str, str]:
    """The variables ``accelerate launch --config_file`` sets for an FSDP config (its utils/launch.py)."""
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] == "FSDP"
    env = {"ACCELERATE_USE_FSDP": "true"}
    for key, value in config["fsdp_config"].items():
        name = "FSDP_TRANSFORMER_CLS_TO_WRAP" if key == "fsdp_transformer_layer_cls_to_wrap" else key.upper()
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


# With "fsdp", the worker forces accelerate's FSDP path on CPU (what accelerate does on GPUs: the plugin read
# from the FSDP_* variables, distributed type FSDP) and checks that the model it trains is really sharded;
# with "ddp" it trains as accelerate chooses (DDP on gloo).
_LAUNCH = """
import sys, torch
from accelerate import debug_launcher

def worker(recipe_file, mode):
    torch.set_num_threads(1)
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard
    from adaptor_peft.models import VSSBlock
    from adaptor_peft.train import trainer

    real = trainer.fresh_accelerator
    def forced(*args, **kwargs):
        acc = real(*args, **kwargs)
        PartialState().distributed_type = acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables
        return acc
    if mode == "fsdp":
        trainer.fresh_accelerator = forced

    real_finish = trainer.TrainingRun.finish
    def finish(run, last_eval):
        blocks = [m for m in run.unwrapped.modules() if isinstance(m, VSSBlock)]
        assert blocks and all(isinstance(m, FSDPModule) for m in blocks), "VSSBlocks are not wrapped"
        params = dict(run.unwrapped.named_parameters())
        trainable = [n for n, p in params.items() if p.requires_grad]
        assert 0 < len(trainable) < len(params)  # a frozen base with trainable adaptors
        assert all(isinstance(p, DTensor) and p.placements == (Shard(0),) for p in params.values())
        return real_finish(run, last_eval)
    if mode == "fsdp":
        trainer.TrainingRun.finish = finish
    assert trainer.train(recipe_file).steps == 6

debug_launcher(worker, args=tuple(sys.argv[1:]), num_processes=2)
"""


@pytest.mark.slow  # ~20-40 s: two launches of two fresh interpreters (torch and accelerate imports)
def test_two_process_fsdp_equals_single_process_and_resumes_under_ddp(toy_data, tmp_path):
    single = tmp_path / "single"
    train(_recipe(toy_data, single))
    out = tmp_path / "fsdp"
    recipe_file = tmp_path / "fsdp.yaml"
    _recipe(toy_data, out, batch_size=4).save(recipe_file)  # 2 x 4 == the single run's global batch 8

    fsdp_env = fsdp_env_from_config(REPO / "recipes" / "accelerate" / "fsdp.yaml")
    assert fsdp_env["FSDP_VERSION"] == "2" and fsdp_env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "VSSBlock"
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=pythonpath, **fsdp_env)

    def launch(recipe_file: Path, mode: str, env: dict[str, str]) -> None:
        args = [sys.executable, "-c", _LAUNCH, str(recipe_file), mode]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    launch(recipe_file, "fsdp", env)
    assert json.loads((out / "result.json").read_text())["num_processes"] == 2

    from safetensors.torch import load_file

    # the adaptor file (adaptors + head, read back with safetensors) and the last checkpoint's tensors
    for name, a, b in (
        ("adaptor file", load_file(out / "adaptor.safetensors"), load_file(single / "adaptor.safetensors")),
        ("checkpoint", final_tensors(out), final_tensors(single)),
    ):
        assert sorted(a) == sorted(b) and len(a) > 10, name
        initial = load_file(out / "checkpoints" / "step_00000003" / "trainable.safetensors")
        assert any(not torch.equal(a[k], initial[k]) for k in a if k in initial), f"{name}: nothing trained"
        for k in a:
            assert a[k].shape == b[k].shape, (name, k)  # whole tensors, not one process's shard
            torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=f"{name}: {k}")
    # the optimizer state is gathered too, in optimizer.state_dict()'s layout: equal to the single run's
    last = Path("checkpoints") / "step_00000006" / "optimizer.pt"
    sharded, plain = (torch.load(run / last, weights_only=True) for run in (out, single))
    assert [g["params"] for g in sharded["param_groups"]] == [g["params"] for g in plain["param_groups"]]
    assert sharded["state"].keys() == plain["state"].keys() and len(plain["state"]) > 10
    for i, moments in plain["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                sharded["state"][i][key], moments[key], atol=1e-7, rtol=1e-4, msg=f"{i}"
            )

    # the FSDP run's step-3 checkpoint resumes under DDP (as the error for an FSDP resume advises) to the
    # single run's result: the whole tensors and the renumbered optimizer state load as they are
    for name in ("result.json", "final_eval.json", "adaptor.safetensors"):
        (out / name).unlink()
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    (out / "checkpoints" / "latest").write_text("step_00000003\n")  # as if killed after step 3
    resume_file = tmp_path / "resume.yaml"
    _recipe(toy_data, out, batch_size=4, resume=True).save(resume_file)
    ddp_env = {k: v for k, v in env.items() if k not in fsdp_env}
    launch(resume_file, "ddp", ddp_env)
    a, b = load_file(out / "adaptor.safetensors"), load_file(single / "adaptor.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5, msg=f"resumed: {k}")


def test_fsdp_asked_on_cpu_stops_with_a_clear_error(toy_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    out = tmp_path / "run"
    with pytest.raises(FSDPUnavailableError, match=r"never on CPUs.*ACCELERATE_USE_CPU=1 torchrun"):
        train(_recipe(toy_data, out))
    assert not out.exists()  # refused before the run directory is claimed


def test_resume_under_fsdp_is_refused_before_loading(toy_data, tmp_path, monkeypatch):
    """A checkpoint holds whole tensors; loading them into shards is not built: a clear error, not a crash."""
    from adaptor_peft.train import trainer as trainer_mod

    out = tmp_path / "run"
    train(_recipe(toy_data, out, max_steps=3))
    monkeypatch.setattr(trainer_mod, "is_fsdp", lambda accelerator: True)  # as if accelerate sharded
    with pytest.raises(trainer_mod.RunDirError, match=r"step_00000003: resuming a run under FSDP"):
        train(_recipe(toy_data, out, max_steps=6, resume=True))
    assert json.loads((out / "result.json").read_text())["steps"] == 3  # the finished run is untouched
