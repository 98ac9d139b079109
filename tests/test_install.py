"""A fresh install works from the repository root: no shadowed packages, a locked closure, no outside files.

Each command runs in a fresh interpreter with the repo root as working directory, which puts the root
first on sys.path (`python -m`, `python -c`, torchrun): exactly where a top-level `kernels/` package
once shadowed Hugging Face's `kernels` and broke `import peft`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements-lock.txt"


def _run(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
    full_env.pop("PYTHONPATH", None)  # only what `python` itself puts on sys.path
    proc = subprocess.run(args, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def test_kernels_folder_never_shadows_hugging_face_kernels():
    """kernels/ is a namespace portion (no __init__.py); the package imports it through a symlink."""
    assert not (REPO_ROOT / "kernels" / "__init__.py").exists()
    assert (REPO_ROOT / "adaptor_peft" / "kernels").resolve() == (REPO_ROOT / "kernels").resolve()


def test_peft_and_hub_kernels_import_from_repo_root():
    code = (
        "import peft, transformers.integrations.hub_kernels, kernels, pathlib, sys\n"
        f"root = pathlib.Path({str(REPO_ROOT)!r})\n"
        "where = pathlib.Path(kernels.__file__).resolve()\n"
        "assert where.parent != root / 'kernels' and hasattr(kernels, 'get_kernel'), where\n"
        "import adaptor_peft.kernels.dispatch as d\n"
        "assert pathlib.Path(d.__file__).resolve().parent == root / 'kernels', d.__file__\n"
    )
    _run([sys.executable, "-c", code])


def test_cli_help_from_repo_root():
    out = _run([sys.executable, "-m", "adaptor_peft.cli", "--help"]).stdout
    assert re.search(r"\btrain\b", out) and re.search(r"\bquickstart\b", out), out


@pytest.mark.slow
def test_readme_torchrun_line_runs_from_repo_root(tmp_path):
    """The README's 2-process CPU torchrun of the quickstart recipe, cut to a handful of steps."""
    readme = (REPO_ROOT / "README.md").read_text()
    line = next(l for l in readme.splitlines() if "torchrun" in l and "quickstart" in l)
    assert line.startswith("ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m adaptor_peft.cli train ")
    recipe = line.split(" train ", 1)[1].strip()
    out = tmp_path / "ddp"
    overrides = [f"output_dir={out}", "max_steps=4", "save_every=2", "log_every=2", "eval_at_start=false"]
    # --standalone: torchrun picks a free rendezvous port itself (no race with other tests)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*args, "-m", "adaptor_peft.cli", "train", recipe, *overrides], timeout=600, ACCELERATE_USE_CPU="1")
    result = json.loads((out / "result.json").read_text())
    assert result["num_processes"] == 2 and result["steps"] == 4, result
    assert (out / "adaptor.safetensors").is_file()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["max_steps"] == 4


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+) --hash=sha256:[0-9a-f]{64}", line.strip())
            assert m, f"{LOCK.name}: malformed line {line!r}"
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_environment_matches_lock():
    """Every installed distribution is locked at the installed version (and every locked one installed)."""
    pins = _lock_pins()
    # what pip installed into this environment; not copies vendored inside a package that put its
    # _vendor folder on sys.path (setuptools does, once something such as inductor imports it)
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    have = {
        re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
        for d in metadata.distributions()
        if Path(d.locate_file("")).resolve() in site
    }
    have.pop("adaptor-peft", None)
    unlocked = sorted(f"{n}=={v}" for n, v in have.items() if n not in pins)
    assert not unlocked, f"installed but missing from {LOCK.name} (run `make lock`): {unlocked}"
    differ = sorted(
        f"{n}: lock {pins[n]}, installed {have[n]}" for n in pins if n in have and pins[n] != have[n]
    )
    assert not differ, f"installed versions differ from {LOCK.name}: {differ}"
    missing = sorted(n for n in pins if n not in have)
    assert not missing, f"locked but not installed: {missing}"
    for name in ("torch", "torchvision", "peft", "timm", "accelerate", "transformers", "kernels", "pip"):
        assert name in pins, f"{name} is not locked"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
        ).stdout.split(b"\0")
        files = [REPO_ROOT / n.decode() for n in names if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        files = [p for p in REPO_ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [
        p
        for p in files
        if p.is_file() and not p.is_symlink() and p.suffix not in {".safetensors", ".npz", ".png"}
    ]


def test_repository_needs_nothing_outside_it():
    """No file points at the team's shared workspace beside the clone: tests and docs live inside."""
    outside = re.compile(r"\.\./shared|shared/(spec|conformance)\b")
    this = Path(__file__).resolve()
    hits = []
    for path in _tracked_text_files():
        if path.resolve() == this:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [
            f"{path.relative_to(REPO_ROOT)}:{i}"
            for i, l in enumerate(text.splitlines(), 1)
            if outside.search(l)
        ]
    assert not hits, hits
    cited = set()
    for path in _tracked_text_files():
        if path.suffix in {".py", ".yaml", ".sh"}:
            cited |= set(re.findall(r"docs/([A-Za-z_]+\.md)", path.read_text()))
    assert cited, "no docs/ citation found: the scan is broken"
    assert all((REPO_ROOT / "docs" / name).is_file() for name in cited), cited
