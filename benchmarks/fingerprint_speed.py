"""Time of the base-weight fingerprint stored in adaptor files, on tensors the size of VMamba-T.

The fingerprint hashes every byte (sha256), so its cost grows with the model: this prints the time
for a 30M-parameter fp32 state dict (100 tensors of 300k values), the best of a few repeats.

    .venv/bin/python benchmarks/fingerprint_speed.py
    .venv/bin/python benchmarks/fingerprint_speed.py --params 90000000 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

from adaptor_peft.io.fingerprint import fingerprint_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=30_000_000, help="total fp32 parameters")
    parser.add_argument("--tensors", type=int, default=100, help="number of equal tensors")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tensors = {f"t{i}": torch.randn(args.params // args.tensors) for i in range(args.tensors)}
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fp = fingerprint_tensors(tensors)
        times.append(time.perf_counter() - t0)
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    print(
        f"fingerprint of {fp['num_tensors']} tensors, {size_mb:.0f} MB: best {min(times):.3f} s, "
        f"median {sorted(times)[len(times) // 2]:.3f} s ({size_mb / min(times):.0f} MB/s)"
    )


if __name__ == "__main__":
    main()
