"""Issue 19's hostile inputs: input -> exception and message -> time and peak memory, as a markdown table.

Run it from the root of the tree to measure (that tree's ``adaptor_peft`` is imported), e.g. before
and after the issue-19 work:

    cd /tmp/wt-before && nice -n 5 /work/main/.venv/bin/python /path/to/benchmarks/hostile_inputs.py
    cd /tmp/wt-after  && nice -n 5 /work/main/.venv/bin/python benchmarks/hostile_inputs.py

The fixtures (a tiny trained run, adaptor files, checkpoints, peft adapters, hostile files) are built
once in a temp folder with the measured tree's library. Every case then runs in a fresh child
interpreter (cwd = the tree) under RLIMIT_AS (``--cap-gib``, default 4) and a timeout (``--timeout``,
default 60 s); a child that hangs is killed and reported as a timeout. Columns: the exception (or
"-" when the call returned) and the first 100 characters of its message (or of the outcome: return
value, warnings); s = wall time of the call itself (the child's imports and setup excluded); peak MB
= the child's peak RSS over its whole life (VmHWM polled from /proc, including ~0.7-0.9 GB of imported
torch/peft and the setup), and in brackets the call's own growth (VmHWM reset through
/proc/self/clear_refs when the call starts, minus the RSS then). Under the address-space cap an
unbounded allocation fails at once with MemoryError instead of growing: its cost then shows as that
error, not as time or memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

TREE = Path.cwd()
GiB = 1024**3

# ---------------------------------------------------------------------------------------------- cases
# name -> (what the input is, child code: optional setup(), then attack() whose return value is shown)
CASES: dict[str, tuple[str, str]] = {}


def case(name: str, what: str, code: str) -> None:
    """Register one case."""
    CASES[name] = (what, textwrap.dedent(code))


# Reads before validation
case(
    "sparse_10gb",
    "adaptor file: valid header, sparse 10 GB -> load_adaptors",
    """
    import torch
    from adaptor_peft.io import load_adaptors
    from adaptor_peft.models import create_model
    def setup():
        global m; m = create_model("test_vmamba")
    def attack(): load_adaptors(m, W / "sparse10g.safetensors")
""",
)
case(
    "sparse_3gb",
    "adaptor file: valid header, sparse 3 GB -> load_adaptors",
    """
    from adaptor_peft.io import load_adaptors
    from adaptor_peft.models import create_model
    def setup():
        global m; m = create_model("test_vmamba")
    def attack(): load_adaptors(m, W / "sparse3g.safetensors")
""",
)
case(
    "dev_zero",
    "symlink to /dev/zero named .safetensors -> load_adaptors",
    """
    from adaptor_peft.io import load_adaptors
    from adaptor_peft.models import create_model
    def setup():
        global m; m = create_model("test_vmamba")
    def attack(): load_adaptors(m, W / "zero.safetensors")
""",
)
case(
    "fifo_load",
    "FIFO named .safetensors -> load_adaptors",
    """
    from adaptor_peft.io import load_adaptors
    from adaptor_peft.models import create_model
    def setup():
        global m; m = create_model("test_vmamba")
    def attack(): load_adaptors(m, W / "fifo.safetensors")
""",
)
case(
    "fifo_info",
    "FIFO named .safetensors -> adaptor-peft info",
    """
    def attack(): return cli(["info", str(W / "fifo.safetensors")])
""",
)
case(
    "zip_bomb",
    "2 MB zip-bomb .pth (inflates 2 GiB) -> load_checkpoint",
    """
    from adaptor_peft.models import load_checkpoint
    def attack(): load_checkpoint(W / "bomb.pth")
""",
)

# Allocation before validation
case(
    "num_points_file",
    "adaptor file whose config says num_points=4e6 -> load_adaptors (on its own base)",
    """
    import torch
    from adaptor_peft.io import load_adaptors
    from adaptor_peft.models import create_model
    def setup():
        global m; torch.manual_seed(0); m = create_model("test_vmamba")
    def attack(): load_adaptors(m, W / "num_points.safetensors")
""",
)
case(
    "num_points_peft",
    "peft adapter_config.json num_points=4e6 -> from_pretrained; caller's model after",
    """
    import adaptor_peft, torch
    from peft import PeftModel
    from adaptor_peft.models import create_model
    def setup():
        global m, before; m = create_model("test_vmamba"); before = state(m)
    def attack():
        try:
            PeftModel.from_pretrained(m, str(W / "peft_num_points"))
        finally:
            NOTE.append("caller's model " + ("unchanged" if state(m) == before else "CHANGED"))
""",
)
case(
    "predict_dims",
    "trained file, embedded recipe edited to dims 16384 -> load_trained (predict)",
    """
    from adaptor_peft.train.inference import load_trained
    def attack(): load_trained(W / "trained_dims.safetensors")
""",
)
case(
    "predict_timm",
    "trained file, recipe edited to resnet18 + pretrained -> load_trained",
    """
    import timm
    from adaptor_peft.train.inference import load_trained
    real = timm.create_model
    def spy(*a, **k):
        NOTE.append(f"timm.create_model{a}{k} called")
        return real(*a, **k)
    timm.create_model = spy
    import adaptor_peft.train.build as b
    b.timm.create_model = spy
    def attack(): load_trained(W / "trained_timm.safetensors")
""",
)
case(
    "predict_timm_resealed",
    "as above, checksum recomputed by the forger -> load_trained",
    """
    import timm
    from adaptor_peft.train.inference import load_trained
    import adaptor_peft.train.build as b
    real = timm.create_model
    def spy(*a, **k):
        NOTE.append(f"timm.create_model{a}{k} called")
        return real(*a, **k)
    b.timm.create_model = spy
    def attack(): load_trained(W / "trained_timm_resealed.safetensors")
""",
)

# peft route
_PEFT = """
    import adaptor_peft, torch
    from peft import PeftModel
    from adaptor_peft.models import create_model
    def setup():
        global m, before; m = create_model("test_vmamba"); before = state(m)
    def attack():
        try:
            PeftModel.from_pretrained(m, str(W / "{dir}"))
        finally:
            NOTE.append("caller's model " + ("unchanged" if state(m) == before else "CHANGED"))
"""
case("peft_nan", "peft adapter_model.safetensors with a NaN -> from_pretrained", _PEFT.format(dir="peft_nan"))
case(
    "peft_shape", "peft adapter with one misfitting shape -> from_pretrained", _PEFT.format(dir="peft_shape")
)

# Two writers, one run
case(
    "second_writer",
    "train --resume while another live trainer holds the run (its run.lock flock)",
    """
    import fcntl, os
    from adaptor_peft.train.trainer import train
    def setup():
        global fd
        fd = os.open(W / "run_live" / "run.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, b"%d" % os.getpid())
    def attack():
        r = train(RECIPE(W / "run_live", resume=True, max_steps=3))
        return "trained to step 3 alongside the live writer"
""",
)
case(
    "resume_other_lr",
    "train --resume with a different lr",
    """
    from adaptor_peft.train.trainer import train
    def attack():
        train(RECIPE(W / "run_lr", resume=True, max_steps=3, lr=0.5))
        return "resumed with lr 0.5 (saved run: 0.01)"
""",
)

# Damaged but valid checkpoint metadata
for _name, _what in [
    ("manifest_list", "newest checkpoint's manifest.json = []"),
    ("manifest_entry", "manifest.json entry is not a dict"),
    ("latest_ff", "checkpoints/latest starts with 0xFF"),
]:
    case(
        _name,
        f"{_what} -> find_resumable (resume)",
        f"""
    from adaptor_peft.train.checkpointing import find_resumable
    def attack():
        found, notes = find_resumable(W / "run_{_name}")
        return f"resumes from {{found.name if found else None}}; " + " | ".join(notes)
""",
    )

# Recipe YAML
case(
    "laughs_9",
    "recipe: 1.2 KB billion laughs under method_options -> load_recipe + save",
    """
    from adaptor_peft.train.recipes import load_recipe
    def attack():
        load_recipe(W / "laughs9.yaml").save(W / "out9" / "recipe.yaml")
        return f"wrote {(W / 'out9' / 'recipe.yaml').stat().st_size:,} bytes"
""",
)
case(
    "laughs_6",
    "recipe: laughs at depth 6 -> load_recipe + save",
    """
    from adaptor_peft.train.recipes import load_recipe
    def attack():
        load_recipe(W / "laughs6.yaml").save(W / "out6" / "recipe.yaml")
        return f"wrote {(W / 'out6' / 'recipe.yaml').stat().st_size:,} bytes"
""",
)

# Data silently wrong (build_data + the first batch: what train() does before its first step)
_DATA = """
    from adaptor_peft.train.build import build_data
    def attack():
        d = build_data(RECIPE(W / "run_data_{name}", train_data=str(W / "{name}.npz"), eval_data=None), 1)
        x, y = next(iter(d.train_dl))
        mean, nan = float(x.float().mean()), bool(x.isnan().any())
        return f"first batch: mean {{mean:.4g}}, nan {{nan}}, labels {{y.tolist()[:4]}}"
"""
case("data_nan", "npz: float images with NaN pixels -> build_data, first batch", _DATA.format(name="nan"))
case("data_range", "npz: float images in [0, 1], one pixel 1.5 -> first batch", _DATA.format(name="range"))
case("data_label_1e30", "npz: a label of 1e30 -> build_data", _DATA.format(name="label_1e30"))
case("data_str_labels", "npz: string labels -> build_data", _DATA.format(name="str_labels"))
case("data_1e8", "npz: 10^8 1x1 images -> build_data (epoch order)", _DATA.format(name="tiny_1e8"))

# Raw errors
case(
    "ckpt_envelopes",
    "checkpoint nested in 3000 {'model': ...} envelopes -> load_checkpoint",
    """
    from adaptor_peft.models import load_checkpoint
    def attack(): load_checkpoint(W / "envelopes.pth")
""",
)
case(
    "ckpt_empty",
    "empty .pth -> load_checkpoint",
    """
    from adaptor_peft.models import load_checkpoint
    def attack(): load_checkpoint(W / "empty.pth")
""",
)
case(
    "ckpt_garbage",
    "110 bytes of text named .pth -> load_checkpoint",
    """
    from adaptor_peft.models import load_checkpoint
    def attack(): load_checkpoint(W / "garbage.pth")
""",
)
case(
    "convert_garbage",
    "adaptor-peft convert on the same text file",
    """
    def attack(): return cli(["convert", str(W / "garbage.pth"), str(W / "out.safetensors")])
""",
)
case(
    "convert_config",
    "convert: .safetensors whose 'config' metadata is 100k '['",
    """
    from adaptor_peft.models import convert_checkpoint
    def attack(): convert_checkpoint(W / "deep_config.safetensors", W / "out.safetensors")
""",
)
case(
    "untrusted_hint",
    "run the convert command the untrusted-pickle message suggests",
    """
    import shlex
    from adaptor_peft.cli import main
    from adaptor_peft.models import load_checkpoint
    def attack():
        try:
            load_checkpoint(W / "official.pth")
        except Exception as exc:
            cmd = str(exc).split("`")[1]
        NOTE.append("suggested: " + cmd.replace(str(W), "W"))
        argv = [str(W / "conv.safetensors") if a == "OUT.safetensors" else a for a in shlex.split(cmd)]
        from adaptor_peft.models.factory import convert_checkpoint  # what the CLI calls; raises its error
        return convert_checkpoint(argv[-2], argv[-1], trust_pickle="--trust-pickle" in argv).name
""",
)
case(
    "header_106mb",
    "adaptor file with a 106 MB header (all present, sparse) -> read_adaptor_file",
    """
    from adaptor_peft.io import read_adaptor_file
    def attack(): read_adaptor_file(W / "header106.safetensors")
""",
)
case(
    "info_escapes",
    "safetensors file with ESC/BEL in a tensor name and metadata -> adaptor-peft info",
    """
    import contextlib, io
    from adaptor_peft.cli import main
    def attack():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["info", str(W / "escapes.safetensors")])
        text = out.getvalue()
        return "raw ESC/BEL reach the terminal: " + str("\\x1b" in text or "\\x07" in text)
""",
)
case(
    "huge_values",
    "checkpoint with a finite 3e38 weight -> create_model(checkpoint=)",
    """
    from adaptor_peft.models import create_model
    def attack():
        create_model("test_vmamba", checkpoint=W / "huge.pth")
        return "loaded"
""",
)
case(
    "nan_base",
    "checkpoint with a NaN base weight -> create_model(checkpoint=)",
    """
    from adaptor_peft.models import create_model
    def attack():
        create_model("test_vmamba", checkpoint=W / "nan_base.pth")
        return "loaded"
""",
)
case(
    "head_keys",
    "adaptor file: head_keys = every base tensor + empty fingerprint, other base",
    """
    import torch
    from adaptor_peft.io import load_adaptors
    from adaptor_peft.models import create_model
    def setup():
        global m; torch.manual_seed(1); m = create_model("test_vmamba")
    def attack():
        load_adaptors(m, W / "head_keys.safetensors")
        return "loaded onto different base weights"
""",
)

CHILD = """
import json, resource, sys, time, warnings
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
sys.path.insert(0, {tests!r})
W = Path({work!r})
NOTE = []
def state(model):
    return ([(n, type(x).__name__, id(x)) for n, x in model.named_modules()],
            [(k, v.detach().clone().numpy().tobytes()) for k, v in model.state_dict().items()],
            [p.requires_grad for p in model.parameters()])
def cli(argv):
    import contextlib, io
    from adaptor_peft.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    return f"exit {{status}}: {{' '.join(err.getvalue().split())}}"
def RECIPE(out, **over):
    from toy import TINY_VMAMBA
    from adaptor_peft.train.recipes import load_recipe
    base = dict(model=TINY_VMAMBA, method="adaptor", adaptor={{"num_heads": 2, "num_points": 2}},
        train_data=str(W / "train.npz"), eval_data=str(W / "eval.npz"), img_size=16, batch_size=8,
        max_steps=2, lr=0.01, warmup_steps=1, log_every=1, eval_every=100, save_every=1, keep_checkpoints=3,
        progress=False, plot=False, seed=0, output_dir=str(out))
    base.update(over)
    return load_recipe(base)
{code}
def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith(field + ":"))
if "setup" in globals():
    setup()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS: what follows is the call's own peak
base = status_mb("VmRSS")
t0 = time.perf_counter()
out = dict(exc=None, msg="")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        value = attack()
        out["msg"] = "" if value is None else str(value)
    except BaseException as exc:
        out = dict(exc=type(exc).__name__, msg=" ".join(str(exc).split()) or repr(exc))
out["seconds"] = time.perf_counter() - t0
out["growth_mb"] = status_mb("VmHWM") - base
ours = [str(w.message) for w in caught if "adaptor_peft" in w.filename or str(W) in str(w.message)]
out["notes"] = NOTE + ["warning: " + " ".join(m.split()) for m in ours[:1]]
print("RESULT " + json.dumps(out), flush=True)
"""


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_case(name: str, work: Path, cap: int, timeout: float) -> dict:
    """One case in a capped child; its report, or a timeout/crash with the peak seen from /proc."""
    code = CHILD.format(cap=cap, tests=str(TREE / "tests"), work=str(work), code=CASES[name][1])
    env = {**os.environ, "PYTHONPATH": str(TREE), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=TREE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak, start, timed_out = 0.0, time.monotonic(), False
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_mb(proc.pid) or 0.0)
        if time.monotonic() - start > timeout:
            proc.kill()
            timed_out = True
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.decode(errors="replace").splitlines() if ln.startswith("RESULT ")]
    if lines:
        out = json.loads(lines[-1][len("RESULT ") :])
    elif timed_out:
        out = dict(
            exc="TIMEOUT", msg=f"killed after {timeout:.0f} s (hang or still working)", seconds=timeout
        )
    else:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        out = dict(exc="CRASH", msg=f"child died (rc {proc.returncode}): {tail[0]}", seconds=float("nan"))
    out["peak_mb"] = peak
    return out


# ------------------------------------------------------------------------------------------- fixtures
def build_fixtures(work: Path) -> None:
    """Every input the cases read, made with the measured tree's library."""
    import numpy as np
    import torch
    import yaml
    from safetensors import safe_open
    from safetensors.torch import save_file

    sys.path.insert(0, str(TREE / "tests"))
    from toy import TINY_VMAMBA, write_toy_npz

    from adaptor_peft import MambaAdaptorConfig, inject_adaptors, save_adaptors
    from adaptor_peft.models import create_model
    from adaptor_peft.train.recipes import load_recipe
    from adaptor_peft.train.trainer import train

    def read(path: Path) -> tuple[dict, dict]:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})

    def digest(meta: dict, tensors: dict) -> str:
        from adaptor_peft.io import content_digest

        return content_digest(meta, tensors)

    torch.manual_seed(0)
    adaptor = save_adaptors(
        inject_adaptors(create_model("test_vmamba"), MambaAdaptorConfig()), work / "a.safetensors"
    )
    for name, size in (("sparse10g", 10 * GiB), ("sparse3g", 3 * GiB)):
        (work / f"{name}.safetensors").write_bytes(adaptor.read_bytes())
        os.truncate(work / f"{name}.safetensors", size)
    (work / "zero.safetensors").symlink_to("/dev/zero")
    os.mkfifo(work / "fifo.safetensors")

    torch.manual_seed(0)
    sd = create_model("test_vmamba").state_dict()
    torch.save({"model": sd}, work / "valid.pth")
    with (
        zipfile.ZipFile(work / "valid.pth") as src,
        zipfile.ZipFile(work / "bomb.pth", "w", compresslevel=1) as out,
    ):
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                member.compress_type = zipfile.ZIP_DEFLATED
                with out.open(member, "w", force_zip64=True) as f:
                    chunk = bytes(64 * 1024**2)
                    for _ in range(32):  # 2 GiB of zeros
                        f.write(chunk)
            else:
                out.writestr(info, src.read(info.filename))

    tensors, meta = read(adaptor)
    key = next(k for k in meta if k.endswith(".config") and "base" not in k)
    cfg = json.loads(meta[key])
    cfg["num_points"] = 4_000_000
    save_file(tensors, str(work / "num_points.safetensors"), metadata={**meta, key: json.dumps(cfg)})

    # peft adapters
    import peft

    import adaptor_peft.peft_tuner as pt

    torch.manual_seed(0)
    pm = peft.get_peft_model(create_model("test_vmamba"), pt.MambaAdaptorPeftConfig(num_points=3))
    pm.save_pretrained(str(work / "peft_good"))
    good = work / "peft_good"
    for name in ("peft_num_points", "peft_nan", "peft_shape"):
        (work / name).mkdir()
        cfg = json.loads((good / "adapter_config.json").read_text())
        if name == "peft_num_points":
            cfg["num_points"] = 4_000_000
        (work / name / "adapter_config.json").write_text(json.dumps(cfg))
        t, m = read(good / "adapter_model.safetensors")
        k = sorted(t)[0]
        if name == "peft_nan":
            t[k] = t[k].clone()
            t[k].view(-1)[0] = float("nan")
        if name == "peft_shape":
            t[k] = torch.zeros(*t[k].shape[:-1], t[k].shape[-1] + 1)
        save_file(t, str(work / name / "adapter_model.safetensors"), metadata=m)

    # a tiny trained run, and copies of it for the resume / metadata cases
    write_toy_npz(work / "train.npz", 48, num_classes=4, size=12, seed=0)
    write_toy_npz(work / "eval.npz", 24, num_classes=4, size=12, seed=1)
    recipe = dict(
        model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2},
        train_data=str(work / "train.npz"), eval_data=str(work / "eval.npz"), img_size=16, batch_size=8,
        max_steps=2, lr=0.01, warmup_steps=1, log_every=1, eval_every=100, save_every=1, keep_checkpoints=3,
        progress=False, plot=False, seed=0, output_dir=str(work / "run"),
    )  # fmt: skip
    torch.set_num_threads(1)
    train(load_recipe(recipe))
    import shutil

    for name in ("run_live", "run_lr", "run_manifest_list", "run_manifest_entry", "run_latest_ff"):
        shutil.copytree(work / "run", work / name)
    for lock in work.glob("run*/run.lock"):
        lock.unlink()
    for run in ("run_live", "run_lr"):  # as if killed after its last checkpoint: resumable, not finished
        for name in ("result.json", "final_eval.json", "adaptor.safetensors"):
            (work / run / name).unlink(missing_ok=True)
    newest = lambda run: sorted((work / run / "checkpoints").glob("step_*"))[-1]  # noqa: E731
    (newest("run_manifest_list") / "manifest.json").write_text("[]")
    m = json.loads((newest("run_manifest_entry") / "manifest.json").read_text())
    m[next(iter(m))] = 5
    (newest("run_manifest_entry") / "manifest.json").write_text(json.dumps(m))
    (work / "run_latest_ff" / "checkpoints" / "latest").write_bytes(b"\xffstep_00000002")

    trained = work / "run" / "adaptor.safetensors"
    for name, changes, reseal in [
        ("trained_dims", {"model": {**TINY_VMAMBA, "dims": 16384}}, False),
        ("trained_timm", {"model": "resnet18", "model_kwargs": {"pretrained": True}}, False),
        ("trained_timm_resealed", {"model": "resnet18", "model_kwargs": {"pretrained": True}}, True),
    ]:
        t, m = read(trained)
        ukey = next(k for k in m if k.endswith("user_metadata"))
        user = json.loads(m[ukey])
        user["recipe"] = {**user["recipe"], **changes}
        m[ukey] = json.dumps(user, sort_keys=True)
        if reseal:
            skey = next(k for k in m if k.endswith("content_sha256"))
            m[skey] = digest(m, t)
        save_file(t, str(work / f"{name}.safetensors"), metadata=m)

    # recipes
    def laughs(depth: int) -> str:
        lines = [
            "model: test_vmamba",
            "method_options:",
            "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
        ]
        lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, depth + 1)]
        return "\n".join(lines) + "\n"

    (work / "laughs9.yaml").write_text(laughs(9))
    (work / "laughs6.yaml").write_text(laughs(6))

    # data
    rng = np.random.default_rng(0)
    x = rng.random((16, 12, 12), dtype=np.float32)
    y = np.arange(16) % 4
    nan = x.copy()
    nan[:, 3:6, 3:6] = np.nan
    np.savez(work / "nan.npz", x=nan, y=y)
    rng_x = x.copy()
    rng_x[0, 0, 0] = 1.5
    np.savez(work / "range.npz", x=rng_x, y=y)
    np.savez(
        work / "label_1e30.npz", x=(x * 255).astype(np.uint8), y=np.where(y == 3, 1e30, y).astype(np.float64)
    )
    np.savez(work / "str_labels.npz", x=(x * 255).astype(np.uint8), y=np.array(["cat", "dog"] * 8))
    n = 10**8
    np.savez(
        work / "tiny_1e8.npz", x=np.zeros((n, 1, 1), dtype=np.uint8), y=(np.arange(n) % 2).astype(np.uint8)
    )

    # raw errors
    nested: dict = {"w": torch.zeros(1)}
    for _ in range(3000):
        nested = {"model": nested}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    torch.save(nested, work / "envelopes.pth")
    sys.setrecursionlimit(limit)
    (work / "empty.pth").write_bytes(b"")
    (work / "garbage.pth").write_bytes(b"hello world" * 10)
    save_file(
        {"a": torch.zeros(2)}, str(work / "deep_config.safetensors"), metadata={"config": "[" * 100_000}
    )
    import types

    torch.save({"model": sd, "config": types.SimpleNamespace(a=1)}, work / "official.pth")
    n = 106 * 1024**2
    with open(work / "header106.safetensors", "wb") as f:
        f.write(n.to_bytes(8, "little") + b"{")
        f.truncate(8 + n + 64)
    esc = "\x1b[2J\x1b]0;owned\x07"
    save_file({"t" + esc: torch.zeros(1)}, str(work / "escapes.safetensors"), metadata={"note": "hi" + esc})
    for name, k, value in (
        ("huge", "layers.0.blocks.0.op.in_proj.weight", 3e38),
        ("nan_base", "layers.1.blocks.0.norm.weight", float("nan")),
    ):
        bad = {kk: vv.clone() for kk, vv in sd.items()}
        bad[k].view(-1)[3] = value
        torch.save({"model": bad}, work / f"{name}.pth")
    # head_keys trick: every base tensor listed as a head key, the fingerprint of the empty set
    t, m = read(adaptor)
    hk = next(k for k in m if k.endswith("head_keys"))
    fk = next(k for k in m if k.endswith("base_fingerprint"))
    m[hk] = json.dumps(sorted(k for k in sd if k not in t))
    from adaptor_peft.io.fingerprint import fingerprint_tensors

    m[fk] = json.dumps(fingerprint_tensors({}), sort_keys=True)
    skey = next(k for k in m if k.endswith("content_sha256"))
    m[skey] = digest(m, t)
    save_file(t, str(work / "head_keys.safetensors"), metadata=m)
    del yaml


def main(argv: list[str] | None = None) -> int:
    """Build the fixtures, run every case capped, print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--cap-gib", type=float, default=4.0, help="RLIMIT_AS of each child")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a child is killed")
    ap.add_argument("--label", default=str(TREE), help="what the table is measured on")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(TREE))  # the measured tree's adaptor_peft, also for the fixtures
    names = args.only or list(CASES)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        build_fixtures(work)
        print(f"fixtures built in {time.perf_counter() - t0:.0f} s; tree {args.label}", file=sys.stderr)
        rows = []
        for name in names:
            r = run_case(name, work, int(args.cap_gib * GiB), args.timeout)
            notes = "; ".join(r.get("notes", [])).replace(str(work), "W")
            msg = r.get("msg", "").replace(str(work), "W")[:100] + (f" // {notes[:120]}" if notes else "")
            msg = msg.replace("|", "/")
            growth = f" (+{r['growth_mb']:.0f})" if "growth_mb" in r else ""
            rows.append(
                f"| {name} | {CASES[name][0]} | {r['exc'] or '-'} | {msg} | {r['seconds']:.2f} | "
                f"{r['peak_mb']:.0f}{growth} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"Measured on: {args.label} (cap {args.cap_gib} GiB, timeout {args.timeout:.0f} s per case)\n")
    print("| case | input -> call | exception | message / outcome (first 100 chars) | s | peak MB (+call) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
