"""Benchmarks: scripts that print JSON figures. Run each from the repository root as a module, for example

    python -m benchmarks.bench_sampling --out benchmarks/results/sampling.json

Shared pieces (the `meta` block, --out / --workdir, JSON output, timing and /proc helpers) are in
benchmarks/common.py.
"""
