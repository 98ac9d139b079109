"""One writer per run directory, resume only with the run's own recipe, and damaged checkpoint metadata of
any shape (manifest, latest) falls back to the previous complete checkpoint with a warning.

Hostile cases that could hang (a second trainer on a live run) run in subprocesses with timeouts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from reliability_helpers import (
    Killed,
    assert_clean_run_dir,
    assert_same_run,
    die_after_checkpoint,
    make_recipe,
    recipe_dict,
)

import adaptor_peft
from adaptor_peft.train.checkpointing import CheckpointError, find_resumable
from adaptor_peft.train.run_lock import LOCK_FILE, RunDirLock
from adaptor_peft.train.trainer import (
    STEP_FILE_ENV,
    STEP_STOP_ENV,
    ResumeMismatchError,
    RunDirError,
    RunDirLockedError,
    train,
)

TREE = str(Path(adaptor_peft.__file__).resolve().parents[1])
RUN_LOCK_PY = Path(adaptor_peft.__file__).with_name("train") / "run_lock.py"
TIMEOUT_S = 240


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run: bit-exact comparisons
    yield
    torch.set_num_threads(before)


def _env(**extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (TREE, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=pythonpath)
    env.pop(STEP_FILE_ENV, None)
    env.pop(STEP_STOP_ENV, None)
    env.update(extra)
    return env


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """A light process (run_lock.py only, no torch) that takes the run's lock and sleeps."""
    code = (
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('run_lock', {str(RUN_LOCK_PY)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "mod.RunDirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


# --- one writer per run directory ------------------------------------------------------------------


def test_second_trainer_on_a_live_run_is_refused(toy_data, tmp_path):
    """The issue's case: `train --resume` while the run is still training -> exit 1 naming the lock."""
    out = tmp_path / "run"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(toy_data, out)))
    steps = tmp_path / "steps.txt"
    cmd = [sys.executable, "-m", "adaptor_peft.cli", "train", str(recipe_file)]
    first = subprocess.Popen(
        cmd,
        env=_env(**{STEP_FILE_ENV: str(steps), STEP_STOP_ENV: "1"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (steps.exists() and steps.read_text() == "1\n" and _state(first.pid) == "T"):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first trainer never reached step 1"
            time.sleep(0.01)
        metrics_before = (out / "metrics.jsonl").read_bytes() if (out / "metrics.jsonl").exists() else b""
        second = subprocess.run(
            cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S
        )
        assert second.returncode == 1, second.stderr
        message = (
            f"error: {out / LOCK_FILE}: run directory in use by process {first.pid}; "
            "wait for it to finish or stop it, or use another output_dir\n"
        )
        assert second.stderr.endswith(message), second.stderr
        assert ((out / "metrics.jsonl").read_bytes() if (out / "metrics.jsonl").exists() else b"") == (
            metrics_before
        )
        # the first run goes on to the end, alone
        while first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            assert time.monotonic() < deadline, "the first trainer did not finish"
            time.sleep(0.05)
        assert first.returncode == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)
    steps_logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged))  # no step twice
    assert not (out / LOCK_FILE).exists()
    assert_clean_run_dir(out)


def test_locked_run_dir_refuses_train_in_process(toy_data, tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        for over in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(RunDirLockedError) as info:
                train(make_recipe(toy_data, out, **over))
            assert str(info.value) == (
                f"{out / LOCK_FILE}: run directory in use by process {holder.pid}; "
                "wait for it to finish or stop it, or use another output_dir"
            )
            assert isinstance(info.value, RunDirError)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait(timeout=60)
    # its owner died: the lock is free again (the kernel dropped the flock), the stale file is taken over
    train(make_recipe(toy_data, out, max_steps=2, eval_data=None))
    assert not (out / LOCK_FILE).exists()


def test_stale_lock_of_dead_process_is_taken_over_with_warning(toy_data, reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    pid = _dead_pid()
    (out / LOCK_FILE).write_text(f"{pid}\n")
    train(make_recipe(toy_data, out))
    printed = capsys.readouterr().out
    assert f"warning: {out / LOCK_FILE}: took over a stale lock of process {pid}, which is gone" in printed
    assert_same_run(out, reference_run)
    assert_clean_run_dir(out)
    assert not (out / LOCK_FILE).exists()


def test_damaged_lock_file_is_taken_over(toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_bytes(b"\xff\xfe garbage")
    train(make_recipe(toy_data, out, max_steps=2, eval_data=None))
    assert f"warning: {out / LOCK_FILE}: took over a damaged lock file" in capsys.readouterr().out


def test_lock_is_released_when_a_run_fails(toy_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    assert not (out / LOCK_FILE).exists()
    lock = RunDirLock(out).acquire()  # free
    lock.release()


def test_lock_object_basics(tmp_path):
    lock = RunDirLock(tmp_path / "r").acquire()
    assert (tmp_path / "r" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunDirLockedError, match=f"in use by process {os.getpid()}"):
        RunDirLock(tmp_path / "r").acquire()  # a second lock object in the same process: refused too
    lock.release()
    lock.release()
    with RunDirLock(tmp_path / "r") as again:
        assert again.held and again.stale_message() is None
    assert not (tmp_path / "r" / LOCK_FILE).exists()


def test_output_dir_that_cannot_be_created_is_a_run_dir_error(toy_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError) as info:
        train(make_recipe(toy_data, blocker / "run"))
    assert str(info.value).startswith(f"{blocker / 'run'}: cannot create the run directory (")
    assert str(info.value).endswith("); choose another output_dir")


# --- resume only with the run's own recipe ---------------------------------------------------------


@pytest.mark.parametrize(
    "over, keys",
    [
        ({"lr": 0.02}, "lr"),
        ({"train_data": "OTHER"}, "train_data"),
        ({"lr": 0.02, "seed": 1, "batch_size": 4}, "batch_size, lr, seed"),
        ({"adaptor": {"num_heads": 1, "num_points": 2, "dilations": [1, 2]}}, "adaptor"),
    ],
)
def test_resume_with_a_different_recipe_is_refused(toy_data, tmp_path, monkeypatch, over, keys):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    monkeypatch.undo()
    if over.get("train_data") == "OTHER":
        other = tmp_path / "other.npz"
        shutil.copy(toy_data[0], other)
        over = {"train_data": str(other)}
    saved = (out / "recipe.yaml").read_bytes()
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(ResumeMismatchError) as info:
        train(make_recipe(toy_data, out, resume=True, **over))
    message = str(info.value)
    assert message.startswith(f"{out / 'recipe.yaml'}: resume recipe differs from the run's in {keys}; ")
    assert "max_steps" in message and "\n" not in message
    assert (out / "recipe.yaml").read_bytes() == saved
    assert (out / "metrics.jsonl").read_bytes() == metrics
    assert not (out / LOCK_FILE).exists()
    # the CLI: one line, exit 1
    from adaptor_peft.cli import main as cli_main

    recipe_file = tmp_path / "again.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(toy_data, out, **over)))
    assert cli_main(["train", str(recipe_file), "--resume"]) == 1


def test_resume_may_extend_max_steps(toy_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out, max_steps=4))
    monkeypatch.undo()
    result = train(make_recipe(toy_data, out, max_steps=6, resume=True, progress=True, plot=True))
    assert result.steps == 6
    assert "resumed from" in capsys.readouterr().out
    assert yaml.safe_load((out / "recipe.yaml").read_text())["max_steps"] == 6


def test_resume_with_a_damaged_saved_recipe_is_refused(toy_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    monkeypatch.undo()
    for damage, what in ((b"\xff\xfe: [", "unreadable saved recipe"), (b"- 1\n- 2\n", "is not a mapping")):
        (out / "recipe.yaml").write_bytes(damage)
        with pytest.raises(ResumeMismatchError, match=what) as info:
            train(make_recipe(toy_data, out, resume=True))
        assert str(info.value).startswith(f"{out / 'recipe.yaml'}: ")
        assert str(info.value).endswith("restore it or pass overwrite=true")


# --- damaged checkpoint metadata -------------------------------------------------------------------

DAMAGED_METADATA = {
    # what is written over the newest checkpoint's metadata -> a fragment of the warning
    "manifest_empty_list": ("manifest.json", b"[]", "damaged manifest (a list, not a mapping)"),
    "manifest_null": ("manifest.json", b"null", "damaged manifest (a NoneType, not a mapping)"),
    "manifest_entry_not_dict": (
        "manifest.json",
        b'{"state.json": 5}',
        "damaged manifest (entry 'state.json' is not {size, sha256})",
    ),
    "manifest_bad_utf8": ("manifest.json", b"\xff\xfe{}", "manifest.json: unreadable manifest ("),
    "manifest_path_escape": (
        "manifest.json",
        b'{"../../x": {"size": 1, "sha256": "0"}}',
        "damaged manifest (entry name '../../x')",
    ),
    "latest_0xff": ("latest", b"\xffstep_00000004\n", "latest: damaged (not a checkpoint name)"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED_METADATA))
def test_damaged_metadata_falls_back_to_previous_checkpoint(
    toy_data, reference_run, tmp_path, monkeypatch, capsys, kind
):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=4)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    monkeypatch.undo()
    name, data, warning = DAMAGED_METADATA[kind]
    ckpts = out / "checkpoints"
    target = ckpts / "latest" if name == "latest" else ckpts / "step_00000004" / name
    target.write_bytes(data)
    if name == "latest":  # a garbled latest alone loses nothing: the newest complete folder is used
        (ckpts / "step_00000004" / "manifest.json").write_bytes(b"[]")
    capsys.readouterr()
    train(make_recipe(toy_data, out, resume=True))
    printed = capsys.readouterr().out
    assert "warning: " in printed and warning in printed, printed
    assert f"resumed from {ckpts / 'step_00000003'} at step 3/6" in printed
    assert_same_run(out, reference_run)
    assert_clean_run_dir(out)


FUZZ_TRIALS = 400
FUZZ_SEED = 20261205


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "str", "list", "dict"] if depth < 4 else ["int", "str", "null"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**70, rng.randint(-(10**6), 10**6)])
    if kind == "float":
        return rng.choice([0.5, -1e308, float("inf"), float("nan")])
    if kind == "str":
        return rng.choice(
            ["", "..", "/", "a/b", "step_00000004", "\u00ff", "x" * 300, "\x00", "trainable.safetensors"]
        )
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    names = [
        "trainable.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "state.json",
        "rng_rank0.pt",
        "..",
        "/etc",
    ]
    out = {}
    for _ in range(rng.randint(0, 5)):
        key = rng.choice(names + [str(_random_json(rng, 4))])
        out[key] = (
            {"size": _random_json(rng, depth + 1), "sha256": _random_json(rng, depth + 1)}
            if rng.random() < 0.5
            else _random_json(rng, depth + 1)
        )
    return out


def _random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 4, 16, 200])))


def test_fuzz_checkpoint_metadata_reader(toy_data, tmp_path, monkeypatch):
    """Random JSON shapes and random bytes for manifest/latest: the reader returns the newest checkpoint that
    is still complete (with warnings for the damaged ones) or raises CheckpointError, nothing else."""
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=3)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out, eval_data=None))
    ckpts = out / "checkpoints"
    newest, previous = ckpts / "step_00000003", ckpts / "step_00000002"
    pristine = {
        p: p.read_bytes() for p in (ckpts / "latest", newest / "manifest.json", previous / "manifest.json")
    }
    rng = random.Random(FUZZ_SEED)
    outcomes = {"newest": 0, "previous": 0, "older": 0, "none": 0, "error": 0}
    for trial in range(FUZZ_TRIALS):
        for path, data in pristine.items():
            path.write_bytes(data)
        damaged = []
        for path in (ckpts / "latest", newest / "manifest.json", previous / "manifest.json"):
            if path.parent == previous and rng.random() < 0.7:
                continue  # mostly leave the previous one intact
            if rng.random() < (0.3 if path.name == "latest" else 0.15):
                continue
            damaged.append(path)
            if rng.random() < 0.5:
                path.write_bytes(_random_bytes(rng))
            else:
                path.write_text(json.dumps(_random_json(rng)))
        try:
            folder, warnings = find_resumable(out, world_size=1)
        except CheckpointError as exc:  # the only error allowed (none expected with world_size=1)
            outcomes["error"] += 1
            assert "\n" not in str(exc)
            continue
        except Exception as exc:  # pragma: no cover - the failure being tested for
            pytest.fail(f"trial {trial}: {type(exc).__name__}: {exc} (damaged {damaged})")
        assert all(isinstance(w, str) and "\n" not in w for w in warnings)
        if folder == newest:
            outcomes["newest"] += 1
            assert (
                newest / "manifest.json" not in damaged
                or pristine[newest / "manifest.json"] == (newest / "manifest.json").read_bytes()
            )
        elif folder == previous:
            outcomes["previous"] += 1
            assert warnings, f"trial {trial}: fell back without a warning"
        elif folder is None:
            outcomes["none"] += 1
        else:
            outcomes["older"] += 1
            assert warnings
    print("fuzz outcomes:", outcomes)
    assert outcomes["previous"] > FUZZ_TRIALS // 4 and outcomes["older"] > 0 and outcomes["newest"] > 0
    for path, data in pristine.items():
        path.write_bytes(data)
    assert find_resumable(out) == (newest, [])


_DDP_REFUSED = """
import sys, torch
from accelerate import debug_launcher

def worker(recipe_file):
    torch.set_num_threads(1)
    from accelerate import PartialState
    from adaptor_peft.train.trainer import RunDirLockedError, train
    try:
        train(recipe_file)
    except RunDirLockedError as exc:
        print(f"rank {PartialState().process_index} refused: {exc}", flush=True)

debug_launcher(worker, args=(sys.argv[1],), num_processes=2)
"""


@pytest.mark.slow  # ~20 s: two fresh interpreters import torch and accelerate
def test_ddp_ranks_all_refuse_a_locked_run_dir_without_hanging(toy_data, tmp_path):
    """Only the main process takes the lock; when it cannot, every rank raises its error (none waits)."""
    out = tmp_path / "run"
    recipe_file = tmp_path / "ddp.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(toy_data, out, batch_size=4)))
    holder = _hold_lock(out)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _DDP_REFUSED, str(recipe_file)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    message = f"refused: {out / LOCK_FILE}: run directory in use by process {holder.pid}; "
    for rank in (0, 1):
        assert f"rank {rank} {message}" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the killed holder's; nothing written
