"""CLI start-up: wall time of `adaptor-peft --help` and `adaptor-peft info FILE` against a baseline tree.

Each command runs as a fresh interpreter from the measured checkout (its adaptor_peft first on the
path), alternating trees round by round so machine load hits both alike; the table shows medians and
the ratio this tree / baseline, with `python -c pass` as the interpreter's own floor.

    git worktree add /tmp/startup-before c017370
    python benchmarks/startup_time.py --baseline /tmp/startup-before --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_FILE = "adaptor_peft/assets/vmamba_fmnist_d32.safetensors"
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import adaptor_peft": ["-c", "import adaptor_peft"],
    "adaptor-peft --help": ["-m", "adaptor_peft.cli", "--help"],
    "adaptor-peft info FILE": ["-m", "adaptor_peft.cli", "info", BASE_FILE],
}


def wall(tree: Path, args: list[str]) -> float:
    """Seconds one fresh interpreter takes to run ``args`` from ``tree`` (its output discarded)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Measure every command in both trees, alternating; print a markdown table of medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="another checkout (e.g. an older commit)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    trees = {"this tree": REPO, "baseline": args.baseline.resolve()}
    times: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in COMMANDS}
    for _ in range(args.repeats):
        for cmd, cmd_args in COMMANDS.items():
            for label, tree in trees.items():
                times[(label, cmd)].append(wall(tree, cmd_args))
    load = os.getloadavg()[0]
    print(f"Median of {args.repeats} fresh interpreters; baseline: {trees['baseline']}; load {load:.1f}\n")
    print("| command | baseline s | this tree s | this / baseline |")
    print("|---|---|---|---|")
    for cmd in COMMANDS:
        base = statistics.median(times[("baseline", cmd)])
        now = statistics.median(times[("this tree", cmd)])
        print(f"| {cmd} | {base:.3f} | {now:.3f} | {now / base:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
