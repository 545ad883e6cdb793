"""How much the range test's suggestions move with the seed and with the range.

Noise is the known weak spot of every LR range test. This benchmark runs
``bpexp.lr_find.range_test`` on digits for the perceptron and the MLP of
``experiments/``, over 5 seeds (each seed draws its own split, initial weights
and sample order), and prints for each suggestion its median λ and its spread
in decades, log10(max/min) over the seeds. A second table keeps the seed and
moves the range instead: four ranges, shifted and narrowed around the default.

A spread of 0.3 decades is a factor of 2 between the extreme seeds.

    python benchmarks/lr_find_stability.py            # the tables
    python benchmarks/lr_find_stability.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, table  # noqa: E402

from bpexp.config import load_config  # noqa: E402
from bpexp.data import load_dataset  # noqa: E402
from bpexp.lr_find import SUGGESTION_NAMES, range_test  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
MODELS = {
    "perceptron": EXPERIMENTS / "digits_perceptron.yaml",
    "mlp (sgd)": EXPERIMENTS / "digits_mlp.yaml",
}
# The MLP spec trains with Adam; the range test is read for plain SGD, the CLR paper's setting.
OVERRIDES = {"perceptron": {}, "mlp (sgd)": {"optim.name": "sgd", "model.dropout": 0.0}}
SEEDS = [0, 1, 2, 3, 4]
DEFAULT_RANGE = (1e-5, 10.0)
RANGES = [(1e-5, 10.0), (1e-6, 100.0), (1e-4, 10.0), (1e-3, 3.0)]
MODES = ["exp", "linear"]


def spread(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(median λ, log10(max/min) in decades, how many were None) over the given suggestions."""
    found = [v for v in values if v is not None]
    missing = len(values) - len(found)
    if not found:
        return None, None, missing
    return float(np.median(found)), math.log10(max(found) / min(found)), missing


def run(name: str, seed: int, start: float, end: float, mode: str) -> dict[str, float | None]:
    config = load_config(MODELS[name], {**OVERRIDES[name], "seed": seed})
    dataset = load_dataset(config.data, seed, dtype=config.model.dtype)
    result = range_test(config, dataset, start_lr=start, end_lr=end, mode=mode)
    return {key: s.lr for key, s in result.suggestions.items()}


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    args = parser.parse_args()
    started = time.perf_counter()
    out: dict = {"seeds": SEEDS, "by_seed": {}, "by_range": {}}

    # 1. five seeds, the default range, each mode
    for name in MODELS:
        for mode in MODES:
            start, end = DEFAULT_RANGE if mode == "exp" else (1e-3, 3.0)
            log(f"{name}, {mode} {start:g}..{end:g}: seeds {SEEDS}")
            runs = [run(name, seed, start, end, mode) for seed in SEEDS]
            out["by_seed"][f"{name} / {mode} {start:g}..{end:g}"] = {
                key: {"lrs": [r[key] for r in runs], **dict(zip(("median", "decades", "missing"), spread([r[key] for r in runs])))}
                for key in SUGGESTION_NAMES
            }
    # 2. seed 0, four ranges, exponential
    for name in MODELS:
        log(f"{name}, seed 0: ranges {RANGES}")
        runs = [run(name, 0, start, end, "exp") for start, end in RANGES]
        out["by_range"][name] = {
            key: {"lrs": [r[key] for r in runs], **dict(zip(("median", "decades", "missing"), spread([r[key] for r in runs])))}
            for key in SUGGESTION_NAMES
        }
    out["seconds"] = round(time.perf_counter() - started, 1)

    if args.json:
        print(json.dumps(out))
        return
    print(f"LR range test on digits: spread of each suggestion over seeds {SEEDS}, in decades (log10 max/min)\n")
    for label, block in out["by_seed"].items():
        print(label)
        rows = [
            [key, fmt(b["median"], ".3g"), fmt(b["decades"], ".2f"), " ".join(fmt(v, ".2g") for v in b["lrs"])]
            for key, b in block.items()
        ]
        print(table(["suggestion", "median λ", "spread (dec)", "per seed"], rows))
        print()
    print(f"Seed 0, exponential ranges {', '.join(f'{a:g}..{b:g}' for a, b in RANGES)}: spread over the ranges\n")
    for label, block in out["by_range"].items():
        print(label)
        rows = [
            [key, fmt(b["median"], ".3g"), fmt(b["decades"], ".2f"), " ".join(fmt(v, ".2g") for v in b["lrs"])]
            for key, b in block.items()
        ]
        print(table(["suggestion", "median λ", "spread (dec)", "per range"], rows))
        print()
    print(f"({out['seconds']} s)")


if __name__ == "__main__":
    main()
