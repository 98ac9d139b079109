"""Hostile files are refused before they are read: every reader bounds what it reads before validating it.

Each case runs in a child process with an address-space cap (RLIMIT_AS, set in the child) and a timeout,
and asserts the named library exception, a fast failure (a FIFO must not block) and a peak-memory bound:
the child's ru_maxrss may grow by less than 200 MB over the loaded library. Sparse files (a valid header,
then truncate) make the 3 GB and 10 GB cases cost no disk.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from reliability_helpers import child_result

from adaptor_peft import MambaAdaptorConfig, inject_adaptors, save_adaptors
from adaptor_peft.models import create_model

REPO = Path(__file__).resolve().parents[2]  # the child imports adaptor_peft from here (cwd on sys.path)
GiB = 1024**3
RSS_BOUND = 200 * 1024**2  # peak-memory growth allowed for a refusal
CAP = 2 * GiB  # address space the child may add over the loaded library
FAST = 10.0  # seconds a refusal may take (generous: shared CPUs); a FIFO that blocks would never return
CHILD_TIMEOUT = 120

# The child: import everything, record ru_maxrss and cap the address space, then make one call and report
# the exception, its message, the seconds the call took and the growth of ru_maxrss (KiB on Linux).
CHILD = r"""
import contextlib, io, json, resource, sys, time
spec = json.loads(sys.argv[1])
import torch
import adaptor_peft.io as aio
from adaptor_peft.cli import main as cli_main
from adaptor_peft.models import convert_checkpoint, create_model, load_checkpoint

def vm_size():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

def cli_info(path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli_main(["info", path])
    raise SystemExit(f"status {status}: {err.getvalue().strip()}")

calls = {
    "load_adaptors": lambda p: aio.load_adaptors(torch.nn.Linear(2, 2), p),
    "read_adaptor_file": aio.read_adaptor_file,
    "describe_file": aio.describe_file,
    "cli_info": cli_info,
    "load_checkpoint": load_checkpoint,
    "create_model": lambda p: create_model("test_vmamba", checkpoint=p),
    "create_model_from_file": create_model,
    "convert_checkpoint": lambda p: convert_checkpoint(p, p + ".out.safetensors"),
}
create_model("test_vmamba")  # warm: lazy imports and first allocations are the library, not the read
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cap = vm_size() + spec["cap"]
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
t0 = time.monotonic()
out = {"exc": None, "mro": [], "msg": ""}
try:
    calls[spec["call"]](spec["path"])
except BaseException as exc:
    out = {"exc": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__], "msg": str(exc)}
out["seconds"] = time.monotonic() - t0
out["rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print("RESULT " + json.dumps(out))
"""


def run_child(call: str, path: Path, cap: int = CAP) -> dict:
    """Run one reader call on ``path`` in a capped child; its exception, message, seconds, rss growth."""
    argv = [sys.executable, "-c", CHILD, json.dumps({"call": call, "path": str(path), "cap": cap})]
    return child_result(argv, REPO, CHILD_TIMEOUT)


def assert_refused(result: dict, exc: str, *words: str, path: Path | None = None) -> None:
    """The named exception (or a subclass), a one-line message naming the file, fast, with little memory."""
    assert exc in result["mro"], result
    msg = result["msg"]
    for w in words:
        assert w in msg, (w, result)
    if path is not None:
        assert str(path) in msg, result
    assert "\n" not in msg, result
    assert result["seconds"] < FAST, result
    assert result["rss_growth"] < RSS_BOUND, result


def sparse_copy(src: Path, dst: Path, size: int) -> Path:
    """``src`` (a valid file) followed by zeros up to ``size`` bytes, sparse: it costs no disk."""
    dst.write_bytes(src.read_bytes())
    with open(dst, "r+b") as f:
        f.truncate(size)
    return dst


@pytest.fixture(scope="module")
def adaptor_file(tmp_path_factory) -> Path:
    """A valid adaptor file of the test model."""
    torch.manual_seed(0)
    model = inject_adaptors(create_model("test_vmamba"), MambaAdaptorConfig())
    return save_adaptors(model, tmp_path_factory.mktemp("valid") / "adaptor.safetensors")


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory) -> Path:
    """A valid torch.save'd (zip) checkpoint of the test model."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("valid") / "ckpt.pth"
    torch.save({"model": create_model("test_vmamba").state_dict()}, path)
    return path


# --- sparse files: a valid header, then gigabytes of zeros -------------------------------------------


@pytest.mark.parametrize(
    ("size", "call"),
    [(3 * GiB, "load_adaptors"), (10 * GiB, "load_adaptors"), (10 * GiB, "read_adaptor_file"),
     (10 * GiB, "describe_file")],
    ids=["3GB-load_adaptors", "10GB-load_adaptors", "10GB-read_adaptor_file", "10GB-info"],
)  # fmt: skip
def test_sparse_adaptor_file_is_refused_from_its_header(adaptor_file, tmp_path, size, call):
    big = sparse_copy(adaptor_file, tmp_path / "big.safetensors", size)
    assert_refused(run_child(call, big), "AdaptorFileCorruptError", "trailing bytes", path=big)


@pytest.mark.parametrize("size", [3 * GiB, 10 * GiB], ids=["3GB", "10GB"])
def test_sparse_checkpoint_is_over_the_models_budget(checkpoint_file, tmp_path, size):
    big = sparse_copy(checkpoint_file, tmp_path / "big.pth", size)
    assert_refused(run_child("create_model", big), "CheckpointError", "budget", path=big)


def test_sparse_safetensors_checkpoint_is_over_the_models_budget(adaptor_file, tmp_path):
    big = sparse_copy(adaptor_file, tmp_path / "big.safetensors", 3 * GiB)
    assert_refused(run_child("create_model", big), "CheckpointError", "budget", path=big)


# --- FIFOs, devices and directories: refused before a byte is read -----------------------------------


@pytest.mark.parametrize("call", ["load_adaptors", "describe_file"])
def test_fifo_adaptor_file_fails_fast(tmp_path, call):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert_refused(run_child(call, fifo), "AdaptorFileUnreadableError", "FIFO", "regular", path=fifo)


def test_fifo_info_cli_fails_fast(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    result = run_child("cli_info", fifo)
    assert_refused(result, "SystemExit", "status 1: error:", "FIFO", path=fifo)


@pytest.mark.parametrize("call", ["load_checkpoint", "convert_checkpoint"])
def test_fifo_checkpoint_fails_fast(tmp_path, call):
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    assert_refused(run_child(call, fifo), "CheckpointError", "FIFO", "regular", path=fifo)


def test_fifo_model_file_fails_fast(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    assert_refused(run_child("create_model_from_file", fifo), "CheckpointError", "FIFO", path=fifo)


def test_symlink_to_dev_zero(tmp_path):
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    assert_refused(
        run_child("load_adaptors", link), "AdaptorFileUnreadableError", "character device", path=link
    )
    pth = tmp_path / "zero.pth"
    pth.symlink_to("/dev/zero")
    assert_refused(run_child("load_checkpoint", pth), "CheckpointError", "character device", path=pth)


def test_directory(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    assert_refused(run_child("load_adaptors", folder), "AdaptorFileUnreadableError", "directory", path=folder)
    assert_refused(run_child("load_checkpoint", folder), "CheckpointError", "directory", path=folder)


# --- a zip bomb: a torch.save'd zip whose tiny data member inflates to more than 1 GiB ---------------


def make_zip_bomb(valid: Path, dst: Path, inflated: int = GiB + 64 * 1024**2) -> Path:
    """``valid`` (a torch.save zip) with its first tensor's data member replaced by ``inflated`` zeros,
    deflated to a few MB."""
    chunk = bytes(16 * 1024**2)
    with zipfile.ZipFile(valid) as src, zipfile.ZipFile(dst, "w", compresslevel=1) as out:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                member.compress_type = zipfile.ZIP_DEFLATED
                with out.open(member, "w", force_zip64=True) as f:
                    left = inflated
                    while left:
                        f.write(chunk[: min(left, len(chunk))])
                        left -= min(left, len(chunk))
            else:
                out.writestr(info, src.read(info.filename))
    return dst


@pytest.fixture(scope="module")
def zip_bomb(checkpoint_file, tmp_path_factory) -> Path:
    """A ~3 MB .pth that declares (and would inflate to) 1.06 GiB."""
    bomb = make_zip_bomb(checkpoint_file, tmp_path_factory.mktemp("bomb") / "bomb.pth")
    assert bomb.stat().st_size < 4 * 1024**2
    with zipfile.ZipFile(bomb) as zf:
        assert sum(i.file_size for i in zf.infolist()) > GiB
    return bomb


@pytest.mark.parametrize("call", ["load_checkpoint", "create_model", "convert_checkpoint", "describe_file"])
def test_zip_bomb_is_refused_before_inflating(zip_bomb, call):
    assert_refused(
        run_child(call, zip_bomb), "CheckpointError", "zip bomb", "before unpacking", path=zip_bomb
    )


def test_valid_files_still_load_within_the_bounds(adaptor_file, checkpoint_file):
    """The bounds refuse only hostile files: the valid ones read in a capped child too."""
    for call, path in [("read_adaptor_file", adaptor_file), ("create_model", checkpoint_file)]:
        result = run_child(call, path)
        assert result["exc"] is None, result
