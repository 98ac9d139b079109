"""SIGKILL a training process at seeded random step boundaries or moments inside the next step (its
checkpoint write included), resume each time, and require the exact result of an uninterrupted run,
with a clean run directory at the end.

Kill points are announced by the trainer, not guessed from the clock: with the test hooks
ADAPTOR_PEFT_TEST_STEP_FILE / ADAPTOR_PEFT_TEST_STEP_STOP set (trainer.STEP_FILE_ENV, STEP_STOP_ENV), the
trainer appends each completed step (after its checkpoint) to a file and stops itself (SIGSTOP). The test
lets it run step by step (SIGCONT) to a drawn step, then either kills it there, or lets it go on and
kills it after a drawn delay: it is then somewhere in the next step or stopped at its end, and it can
never finish a run before the kill lands, however slow or busy the machine is.

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

import pytest
import torch
import yaml
from reliability_helpers import assert_clean_run_dir, assert_same_run, make_recipe, recipe_dict

import adaptor_peft
from adaptor_peft.train.checkpointing import find_resumable, verify_checkpoint
from adaptor_peft.train.trainer import STEP_FILE_ENV, STEP_STOP_ENV, train

STEPS = 18  # 3 epochs of 6 steps: kills land in every epoch, resumes cross epoch boundaries
KILLS = 5  # 2 at a step boundary, 3 inside the next step (in seeded order)
SEED = 20260127
ZYGOTE = Path(__file__).with_name("train_zygote.py")
WAIT_S = 180


class _ForkServer:
    def __init__(self, log: Path) -> None:
        # the children import the same adaptor_peft tree as this test, with the hooks off unless asked
        tree = str(Path(adaptor_peft.__file__).resolve().parents[1])
        pythonpath = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=pythonpath)
        env.pop(STEP_FILE_ENV, None)
        env.pop(STEP_STOP_ENV, None)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(self.log), "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def result(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"the fork server died; log:\n{self.log.read_text()[-3000:]}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _state(pid: int) -> str | None:
    """The process state letter from /proc (T: stopped, Z: ended, not yet reaped), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def _announced(path: Path) -> list[int]:
    """The steps announced so far (complete lines only)."""
    try:
        return [int(s) for s in path.read_text().split("\n")[:-1]]
    except FileNotFoundError:
        return []


def _stopped_at(pid: int, steps_file: Path, step: int, server: _ForkServer) -> list[int]:
    """Wait until the trainer has announced ``step`` and stopped itself there; return all it announced."""
    deadline = time.monotonic() + WAIT_S
    while True:
        seen = _announced(steps_file)
        state = _state(pid)
        if seen and seen[-1] == step and state == "T":
            return seen
        if state in (None, "Z"):
            pytest.fail(f"training ended before announcing step {step} (announced {seen}): {server.result()}")
        assert time.monotonic() < deadline, f"no stop at step {step} within {WAIT_S} s (announced {seen})"
        time.sleep(0.002)


@pytest.mark.slow  # 15-40 s: 18 steps of reference, then 6 trainer processes
def test_sigkill_at_announced_steps_then_resume_equals_uninterrupted(toy_data, tmp_path):
    server = _ForkServer(tmp_path / "children.log")  # ready first: the reference's step time is then honest
    pid = None
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
        steps_file = tmp_path / "steps.txt"
        hooks = {STEP_FILE_ENV: str(steps_file), STEP_STOP_ENV: "1"}
        rng = random.Random(SEED)
        inside_next = [False, False, True, True, True]  # kill at the boundary, or inside the next step
        rng.shuffle(inside_next)
        kills: list[tuple[int, float | None, int]] = []  # (step reached, delay into the next, resumed from)
        resume_step = 0
        while len(kills) < KILLS:
            steps_file.unlink(missing_ok=True)
            pid = server.start(["train", str(recipe_file)] + (["--resume"] if kills else []), env=hooks)
            target = min(STEPS, resume_step + rng.randint(1, 4))
            for step in range(resume_step + 1, target + 1):
                seen = _stopped_at(pid, steps_file, step, server)
                if step < target:
                    os.kill(pid, signal.SIGCONT)
            assert seen == list(range(resume_step + 1, target + 1))  # every step announced once, in order
            delay = None
            if target < STEPS and inside_next[len(kills)]:  # in the next step, or stopped at its end
                delay = rng.uniform(0.0, 1.2) * step_time
                os.kill(pid, signal.SIGCONT)
                time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            ended = server.result()
            pid = None
            assert ended["signal"] == signal.SIGKILL, (tmp_path / "children.log").read_text()[-3000:]
            folder, warnings = find_resumable(out)
            assert folder is not None and not warnings, (folder, warnings)
            verify_checkpoint(folder)
            resumable = int(folder.name.removeprefix("step_"))
            # every step before the last writes its checkpoint before it is announced; the last one's is
            # written after the loop, so a run stopped at the last step resumes from the one before
            reached = [target] if delay is None else [target, target + 1]
            assert resumable in {min(s, STEPS - 1) for s in reached}, (target, delay, resumable)
            assert not (out / "result.json").exists()
            kills.append((target, None if delay is None else round(delay, 3), resumable))
            resume_step = resumable

        # the final resume, hooks off, runs to the end
        log_start = (tmp_path / "children.log").stat().st_size
        server.start(["train", str(recipe_file), "--resume"])
        ended = server.result()
        printed = (tmp_path / "children.log").read_text()[log_start:]
        assert ended == {"pid": ended["pid"], "signal": None, "exit": 0}, printed[-3000:]
    finally:
        if pid is not None and _state(pid) is not None:  # a failed trial left its process (maybe stopped)
            os.kill(pid, signal.SIGKILL)
            server.result()
        server.close()
    assert (
        f"resumed from {out / 'checkpoints' / f'step_{resume_step:08d}'} at step {resume_step}/{STEPS}"
        in printed
    )
    assert f"done: {STEPS} steps" in printed
    print("kills (step reached, delay into the next step s, resumed from):", kills)
    assert_same_run(out, ref)
    assert_clean_run_dir(out)
    assert_clean_run_dir(ref)
