"""SIGKILL a training process at seeded random moments (after at least one checkpoint), resume each time,
and require the exact result of an uninterrupted run, with a clean run directory at the end.

Every trial is a real ``adaptor-peft train RECIPE [--resume]`` process: forked by a fork server started
fresh for this test (train_zygote.py), so the 6 processes share one interpreter start-up, and none is
forked from pytest (forking a process that has used an OpenMP thread pool can deadlock the child).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from reliability_helpers import assert_clean_run_dir, assert_same_run, make_recipe, recipe_dict

from adaptor_peft.train.checkpointing import find_resumable, verify_checkpoint
from adaptor_peft.train.trainer import train

STEPS = 18  # 3 epochs of 6 steps: kills land in every epoch, resumes cross epoch boundaries
KILLS = 5
SEED = 20260127
ZYGOTE = Path(__file__).with_name("train_zygote.py")


def _latest_step(run_dir: Path) -> int:
    try:
        return int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    except (OSError, ValueError):  # not written yet
        return 0


class _ForkServer:
    def __init__(self, log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def start(self, argv: list[str]) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def result(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"the fork server died; log:\n{self.log.read_text()[-3000:]}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(toy_data, tmp_path):
    server = _ForkServer(tmp_path / "children.log")  # ready first: the reference's step time is then honest
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ref = tmp_path / "reference"
            train(make_recipe(toy_data, ref, max_steps=STEPS, eval_every=4))
        finally:
            torch.set_num_threads(threads)
        logged = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
        # seconds per step (with its checkpoint), from the reference's own log
        step_time = (logged[-1]["time_s"] - logged[0]["time_s"]) / (logged[-1]["step"] - logged[0]["step"])

        out = tmp_path / "killed"
        recipe_file = tmp_path / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe_dict(toy_data, out, max_steps=STEPS, eval_every=4)))
        rng = random.Random(SEED)
        kills: list[tuple[int, float, int]] = []  # (checkpoint seen, delay, resumable step after the kill)
        resume_step = 0
        while len(kills) < KILLS:
            pid = server.start(["train", str(recipe_file)] + (["--resume"] if kills else []))
            # wait for a checkpoint newer than where this process started, then a random extra delay
            # (0-1.5 steps: lands anywhere in the next step or two, including inside checkpoint writes)
            deadline = time.time() + 180
            while _latest_step(out) <= resume_step:
                assert time.time() < deadline, "the training process wrote no checkpoint in 180 s"
                assert os.path.exists(f"/proc/{pid}"), f"training ended early: {server.result()}"
                time.sleep(0.005)
            seen = _latest_step(out)
            delay = rng.uniform(0.0, 1.5) * step_time
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            ended = server.result()
            if ended["signal"] is None:  # finished before the kill landed: not a kill point
                assert ended["exit"] == 0, (tmp_path / "children.log").read_text()[-3000:]
                break
            assert ended["signal"] == signal.SIGKILL
            folder, warnings = find_resumable(out)
            assert folder is not None and not warnings, (folder, warnings)
            verify_checkpoint(folder)
            resumable = int(folder.name.removeprefix("step_"))
            assert resumable >= seen  # the checkpoint seen before the kill is still complete
            assert not (out / "result.json").exists()
            kills.append((seen, round(delay, 3), resumable))
            resume_step = resumable
        assert len(kills) >= KILLS, f"only {len(kills)} kill points landed before the run finished: {kills}"

        # the final resume runs to the end
        log_start = (tmp_path / "children.log").stat().st_size
        server.start(["train", str(recipe_file), "--resume"])
        ended = server.result()
        printed = (tmp_path / "children.log").read_text()[log_start:]
        assert ended == {"pid": ended["pid"], "signal": None, "exit": 0}, printed[-3000:]
    finally:
        server.close()
    assert (
        f"resumed from {out / 'checkpoints' / f'step_{resume_step:08d}'} at step {resume_step}/{STEPS}"
        in printed
    )
    assert f"done: {STEPS} steps" in printed
    print("kill points (checkpoint seen, extra delay s, resumed from):", kills)
    assert_same_run(out, ref)
    assert_clean_run_dir(out)
    assert_clean_run_dir(ref)
