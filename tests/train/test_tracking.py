"""Trackers (log_with), the default evaluation schedule and top-k reporting, on the tiny VMamba.

The TensorBoard events are read back with tensorboardX's own protobuf (``Event``) over the TFRecord
framing, decoded here from the format definition (u64 length, masked CRC-32C of it, the record, masked
CRC-32C of the record), so the test shares no code with the writer or with accelerate.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from toy import TINY_VMAMBA

from adaptor_peft.train.recipes import RecipeError, load_recipe
from adaptor_peft.train.trainer import eval_interval, train


def _recipe(toy_data, out, **over):
    base = dict(
        model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2, "dilations": [1, 2]},
        train_data=str(toy_data[0]), eval_data=str(toy_data[1]), img_size=16, batch_size=8, max_steps=20,
        lr=0.01, warmup_steps=2, weight_decay=0.01, log_every=5, progress=False, plot=False, seed=0,
        clip_grad=1.0, output_dir=str(out),
    )  # fmt: skip
    base.update(over)
    return load_recipe(base)


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit from its definition."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: Path) -> list[bytes]:
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert length_crc == _masked(_crc32c(header)), f"{path}: bad length CRC at byte {pos}"
        record = data[pos + 12 : pos + 12 + length]
        (record_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert record_crc == _masked(_crc32c(record)), f"{path}: bad record CRC at byte {pos}"
        out.append(record)
        pos += 16 + length
    return out


def _tensorboard_scalars(folder: Path) -> dict[tuple[str, int], float]:
    """(tag, step) -> value of every scalar in the event files under ``folder``, files in the order they
    were started; a SessionLog START at step S (a writer's ``purge_step``) drops what earlier files logged
    at steps >= S, as TensorBoard's reader does after a restart."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {folder}"
    events = [[Event.FromString(r) for r in _records(path)] for path in files]
    scalars: dict[tuple[str, int], float] = {}
    for file_events in sorted(events, key=lambda evs: evs[0].wall_time):
        for event in file_events:
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {key: v for key, v in scalars.items() if key[1] < event.step}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    assert (value.tag, event.step) not in scalars, f"{value.tag} logged twice at {event.step}"
                    scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _expected(out: Path) -> dict[tuple[str, int], float]:
    """The numeric fields of metrics.jsonl (train/...) and eval.jsonl (eval/...), as TensorBoard float32."""
    want = {}
    for prefix, name in (("train", "metrics.jsonl"), ("eval", "eval.jsonl")):
        for row in _jsonl(out / name):
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and value is not None:
                    want[(f"{prefix}/{key}", row["step"])] = float(np.float32(value))
    return want


def test_tensorboard_events_hold_the_jsonl_scalars(toy_data, tmp_path):
    out = tmp_path / "run"
    result = train(_recipe(toy_data, out, log_with="tensorboard", eval_at_start=True))
    assert result.steps == 20
    # eval_every unset: about 10 points, every ceil(20 / 10) = 2 steps, and the one at step 0
    assert [r["step"] for r in _jsonl(out / "eval.jsonl")] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    # 4 classes: no top-5 anywhere (it would be 100% by construction)
    assert all("top5" not in r for r in _jsonl(out / "eval.jsonl"))
    assert "top5" not in result.final_eval and json.loads((out / "result.json").read_text())["top5"] is None
    got = _tensorboard_scalars(out / "tensorboard")
    want = _expected(out)
    assert {"train/loss", "train/acc", "train/lr", "train/grad_norm", "eval/top1", "eval/loss"} <= {
        tag for tag, _ in want
    }
    assert sorted(got) == sorted(want)
    assert got == want  # float32 values written as they were logged


def test_tensorboard_after_a_resume_holds_each_step_once(toy_data, tmp_path, monkeypatch):
    """Killed before the step-4 checkpoint (steps 3-4 already logged), resumed from step 2: the events
    logged after the checkpoint are purged, so the tracker again holds exactly the jsonl logs."""
    from adaptor_peft.train import trainer as trainer_mod

    out, real_save = tmp_path / "run", trainer_mod.save_checkpoint

    class Killed(Exception):
        pass

    def die_at_4(accelerator, run_dir, step, *args, **kwargs):
        if step == 4:
            raise Killed
        return real_save(accelerator, run_dir, step, *args, **kwargs)

    kw = dict(max_steps=6, log_every=1, eval_every=3, save_every=2, log_with="tensorboard")
    monkeypatch.setattr(trainer_mod, "save_checkpoint", die_at_4)
    with pytest.raises(Killed):
        train(_recipe(toy_data, out, **kw))
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    train(_recipe(toy_data, out, resume=True, **kw))
    assert [r["step"] for r in _jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    got = _tensorboard_scalars(out / "tensorboard")
    assert got == _expected(out)


def test_jsonl_only_by_default_and_eval_every_zero_means_the_end_only(toy_data, tmp_path):
    out = tmp_path / "run"
    train(_recipe(toy_data, out, max_steps=4, eval_every=0))
    assert [r["step"] for r in _jsonl(out / "eval.jsonl")] == [4]
    assert not (out / "tensorboard").exists()


def test_eval_limit_bounds_periodic_evaluations_only(toy_data, tmp_path):
    """eval_limit=8 of 24 eval images: the step-0 and final evaluations use all 24, the periodic one 8."""
    out = tmp_path / "run"
    result = train(_recipe(toy_data, out, max_steps=4, eval_every=2, eval_at_start=True, eval_limit=8))
    evals = _jsonl(out / "eval.jsonl")
    assert [(r["step"], r["count"]) for r in evals] == [(0, 24), (2, 8), (4, 24)]
    assert all(acc is not None for acc in evals[1]["per_class"])  # stratified: 2 images of each class
    assert result.final_eval["count"] == 24 and result.initial_eval["count"] == 24


def test_eval_interval_by_hand():
    assert eval_interval(None, 300) == 30  # 30, 60, ..., 300: 10 points
    assert eval_interval(None, 25) == 3  # 3, ..., 24 and the final 25: 9 points
    assert eval_interval(None, 7) == 1
    assert eval_interval(0, 300) == 0 and eval_interval(50, 300) == 50
    # the quickstart: 300 steps, so evaluations at 0 (eval_at_start), 30, 60, ..., 300: 11 points in
    # curves.png, the 9 between on 250 of the 1000 test images
    quick = load_recipe("quickstart")
    assert (quick.max_steps, quick.eval_every, quick.eval_at_start, quick.eval_limit) == (
        300,
        None,
        True,
        250,
    )


def test_missing_tensorboardx_is_refused_up_front(toy_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # find_spec() says "not installed"
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    recipe = _recipe(toy_data, tmp_path / "run", log_with="tensorboard")  # loads: eval needs no tracker
    with pytest.raises(RecipeError, match=r"log_with.*pip install adaptor_peft\[tensorboard\]"):
        train(recipe)
    assert not (tmp_path / "run").exists()  # refused before the run directory was touched
    with pytest.raises(RecipeError, match="log_with.*must be one of"):
        load_recipe({"log_with": "wandb_online"})
    with pytest.raises(RecipeError, match="eval_every"):
        load_recipe({"eval_every": -1})


def test_cli_prints_top5_only_where_reported(capsys, tmp_path):
    from types import SimpleNamespace

    from adaptor_peft.cli import _print_result

    artefact = Path(__file__)  # any existing file: _print_result prints its size
    for final, expected in (
        ({"top1": 12.5, "top5": 50.0}, "eval top-1 12.50% top-5 50.00%"),
        ({"top1": 12.5}, "eval top-1 12.50%\n"),
    ):
        result = SimpleNamespace(
            final_eval=final, steps=3, wall_time_s=1.0, artefact=artefact, plot=None, run_dir=artefact.parent
        )
        _print_result(result)
        out = capsys.readouterr().out
        assert f"done: 3 steps in 1.0s, {expected}" in out
        assert "tensorboard" not in out
    (tmp_path / "tensorboard").mkdir()
    _print_result(SimpleNamespace(final_eval=None, steps=3, wall_time_s=1.0, artefact=artefact, plot=None,
                                  run_dir=tmp_path))  # fmt: skip
    assert f"tensorboard events: {tmp_path / 'tensorboard'}" in capsys.readouterr().out


def test_curves_draw_every_evaluation_and_top5_only_where_logged(tmp_path, monkeypatch):
    import matplotlib.axes

    from adaptor_peft.train.tracking import plot_curves

    drawn: dict[str, tuple[list, list]] = {}
    real_plot = matplotlib.axes.Axes.plot

    def record(self, *args, **kwargs):
        drawn[kwargs.get("label", "")] = (list(args[0]), list(args[1])) if len(args) >= 2 else ([], [])
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    train_rows = [{"step": s, "loss": 1.0 / s, "acc": 10.0 * s, "lr": 0.1} for s in (5, 10, 15, 20)]
    eval_rows = [{"step": s, "top1": 5.0 * s, "loss": 2.0 - s / 20, "count": 24} for s in range(0, 21, 2)]
    plot_curves(train_rows, eval_rows, tmp_path / "a.png")
    assert drawn["eval top-1"] == (list(range(0, 21, 2)), [5.0 * s for s in range(0, 21, 2)])
    assert len(drawn["eval loss"][0]) == 11 and "eval top-5" not in drawn
    drawn.clear()
    plot_curves(train_rows, [dict(r, top5=50.0) for r in eval_rows], tmp_path / "b.png")
    assert drawn["eval top-5"] == (list(range(0, 21, 2)), [50.0] * 11)
