"""How well does the diagnosis name what went wrong, how often does its advice fix it, and what does it cost?

Runs the labelled suite (bpexp.labelled_suite: the core cases the tests use, plus the
extended ones) at several seeds and prints:

- the confusion table: one row per ground-truth label set, one column per mode found;
- per mode: precision, recall, and the repair rate, i.e. how often re-running with the
  findings' ``suggested_config`` gives a run with no finding at all;
- the same precision and recall for ``diagnose_history`` (no model: physical checks skipped);
- the diagnosis cost on digits, as a share of the run's training time (CPU time of the
  calling thread, one BLAS thread, so neither other work on the machine nor idle BLAS workers
  blur it), without and with the shuffled twin run, which only runs for a suspected bad ordering.

    python benchmarks/diagnosis_eval.py                  # core + extended, 10 seeds
    python benchmarks/diagnosis_eval.py --quick          # the tests' suite: core, 3 seeds
    python benchmarks/diagnosis_eval.py --seeds 5 --json # one JSON object on stdout

Progress goes to stderr, the tables (or the JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from bpexp.diagnose import MODES
from bpexp.labelled_suite import CORE, EXTENDED, CaseRun, confusion, run_suite, score

SHORT = {
    "overfitting": "over",
    "underfitting": "under",
    "non_convergence": "nonconv",
    "flat_minimum": "flat",
    "lr_too_high": "lr_high",
    "lr_too_low": "lr_low",
    "class_imbalance": "imbal",
    "bad_ordering": "order",
    "none": "none",
}


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "  ".join([str(cells[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])])  # noqa: E731
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.0f}%"


def _pct1(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.1f}%"


def _ratio(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2f}"


def confusion_text(runs: list[CaseRun], history_only: bool = False) -> str:
    table = confusion(runs, history_only=history_only)
    columns = [m for m in (*MODES, "none") if any(m in cells for cells in table.values())]
    rows = []
    for label in sorted(table, key=lambda k: (k == "healthy", k)):
        cells = table[label]
        rows.append([label, *[str(cells.get(c, 0)) if cells.get(c) else "." for c in columns]])
    return _table(["expected \\ found", *[SHORT[c] for c in columns]], rows)


def scores_text(runs: list[CaseRun], history_only: bool = False) -> str:
    scores = score(runs, history_only=history_only)
    rows = []
    for mode in MODES:
        s = scores[mode]
        row = [mode, str(s.tp), str(s.fp), str(s.fn), _ratio(s.precision), _ratio(s.recall)]
        if not history_only:
            row.append(f"{s.repaired}/{s.repair_tried} ({_pct(s.repair_rate)})" if s.repair_tried else "-")
            row.append(f"{s.repaired_two}/{s.repair_tried} ({_pct(s.repair_rate_two)})" if s.repair_tried else "-")
        rows.append(row)
    headers = ["mode", "tp", "fp", "fn", "precision", "recall"] + ([] if history_only else ["repaired", "within 2 rounds"])
    return _table(headers, rows)


def cost_figures(runs: list[CaseRun]) -> dict:
    """Diagnosis CPU time / training CPU time on digits runs: without and with the twin run."""
    digits = [r for r in runs if r.dataset == "digits" and r.train_cpu > 0]
    no_twin = [(r.diagnosis_cpu - r.twin_cpu) / r.train_cpu for r in digits]
    worst = max(digits, key=lambda r: (r.diagnosis_cpu - r.twin_cpu) / r.train_cpu, default=None)
    healthy = [(r.diagnosis_cpu - r.twin_cpu) / r.train_cpu for r in digits if not r.expected]
    failing = [(r.diagnosis_cpu - r.twin_cpu) / r.train_cpu for r in digits if r.expected]
    twins = [r.twin_cpu / r.train_cpu for r in runs if r.twin_cpu > 0 and r.train_cpu > 0]

    def stats(values: list[float]) -> dict:
        if not values:
            return {"n": 0}
        values = sorted(values)
        return {"n": len(values), "median": statistics.median(values), "p90": values[int(0.9 * (len(values) - 1))],
                "max": values[-1], "mean": statistics.fmean(values)}

    return {"digits_all": stats(no_twin), "digits_healthy": stats(healthy), "digits_failing": stats(failing),
            "twin_over_training": stats(twins),
            "digits_worst": None if worst is None else {
                "case": worst.case, "seed": worst.seed, "train_ms": 1e3 * worst.train_cpu,
                "diagnosis_ms": 1e3 * (worst.diagnosis_cpu - worst.twin_cpu), "checks": sorted(worst.check_seconds)}}


def cost_text(costs: dict) -> str:
    rows = []
    for key, label in (("digits_all", "digits, every run (twin excluded)"), ("digits_healthy", "digits, healthy runs"),
                       ("digits_failing", "digits, failing runs (twin excluded)"),
                       ("twin_over_training", "shuffled twin / training (bad-ordering suspects)")):
        s = costs[key]
        if not s.get("n"):
            continue
        rows.append([label, str(s["n"]), *(_pct1(s[k]) for k in ("median", "mean", "p90", "max"))])
    text = _table(["diagnosis cost", "runs", "median", "mean", "p90", "max"], rows)
    worst = costs.get("digits_worst")
    if worst:
        text += (f"\nmost expensive digits run: {worst['case']} seed {worst['seed']}, {worst['diagnosis_ms']:.2f} ms of "
                 f"diagnosis against {worst['train_ms']:.1f} ms of training (checks: {', '.join(worst['checks']) or 'none'})")
    return text


def per_case_text(runs: list[CaseRun]) -> str:
    rows = []
    for name in dict.fromkeys(r.case for r in runs):
        group = [r for r in runs if r.case == name]
        expected = "+".join(sorted(group[0].expected)) or "healthy"
        exact = sum(set(r.found) == set(r.expected) for r in group)
        tried = [r for r in group if r.repaired is not None]
        repaired = f"{sum(r.repaired for r in tried)}/{len(tried)}" if tried else "-"
        cost = statistics.median((r.diagnosis_cpu - r.twin_cpu) / r.train_cpu for r in group if r.train_cpu > 0)
        rows.append([name, expected, f"{exact}/{len(group)}", repaired, _pct(cost)])
    return _table(["case", "expected", "exact", "repaired", "cost (no twin)"], rows)


MARGINS = (
    # (signal, threshold, the modes whose positives should sit on the far side)
    ("late_rise_share", "≥ 0.20", ("lr_too_high", "flat_minimum")),
    ("late_rise_size", "≥ 0.01", ("lr_too_high", "flat_minimum")),
    ("forgetting_ratio", "< 0.7", ("bad_ordering",)),
    ("loss_fall", "< 0.5 (history only)", ("lr_too_low",)),
    ("update_ratio", "< −4 (history only)", ("lr_too_low",)),
    ("label_perplexity", "< 0.5", ("class_imbalance",)),
)


def margins_text(runs: list[CaseRun]) -> str:
    """Range of each History signal over the healthy runs and over the positives it is meant to catch."""

    def span(values: list[float]) -> str:
        values = [v for v in values if isinstance(v, float) and math.isfinite(v)]
        return f"{min(values):.3g} … {max(values):.3g}" if values else "-"

    rows = []
    for name, threshold, modes in MARGINS:
        healthy = [r.signals.get(name, math.nan) for r in runs if not r.expected]
        positive = [r.signals.get(name, math.nan) for r in runs if r.expected & set(modes)]
        rows.append([name, threshold, span(healthy), span(positive), "+".join(SHORT[m] for m in modes)])
    return _table(["signal", "threshold", "healthy runs", "positive runs", "of"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per case (default 10)")
    parser.add_argument("--quick", action="store_true", help="the tests' suite: core cases, 3 seeds")
    parser.add_argument("--no-repair", action="store_true", help="skip the re-runs with the advice applied")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    cases = CORE if args.quick else CORE + EXTENDED
    seeds = tuple(range(3 if args.quick else args.seeds))
    started = time.perf_counter()

    def progress(run: CaseRun) -> None:
        mark = "ok" if set(run.found) == set(run.expected) else "MISS"
        print(f"{run.case:24s} seed {run.seed}: {','.join(run.found) or '-':32s} {mark}", file=sys.stderr, flush=True)

    with threadpool_limits(limits=args.threads):
        runs = run_suite(cases, seeds, repair=not args.no_repair, cost_repeats=2, on_run=progress)
    elapsed = time.perf_counter() - started
    costs = cost_figures(runs)
    if args.json:
        scores = score(runs)
        history = score(runs, history_only=True)
        print(json.dumps({
            "cases": len(cases), "seeds": len(seeds), "runs": len(runs), "seconds": round(elapsed, 1),
            "confusion": confusion(runs),
            "modes": {m: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "precision": s.precision, "recall": s.recall,
                          "repaired": s.repaired, "repaired_within_two_rounds": s.repaired_two,
                          "repair_tried": s.repair_tried} for m, s in scores.items()},
            "history_only": {m: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "precision": s.precision, "recall": s.recall}
                             for m, s in history.items()},
            "cost": costs,
        }, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v))
        return 0
    print(f"labelled suite: {len(cases)} cases × {len(seeds)} seeds = {len(runs)} runs in {elapsed:.0f} s "
          f"({args.threads} BLAS thread{'s' if args.threads > 1 else ''})\n")
    print("confusion (rows: ground truth; columns: modes found; a run may show several)")
    print(confusion_text(runs), "\n")
    print("per mode, diagnose(result): precision, recall, and advice repair rate (the re-run with the")
    print("suggested_config has no finding; 'within 2 rounds' also applies the advised run's own advice)")
    print(scores_text(runs), "\n")
    print("per mode, diagnose_history (History only, no physical checks)")
    print(scores_text(runs, history_only=True), "\n")
    print("History signals: ranges over healthy runs and over the positives they serve")
    print(margins_text(runs), "\n")
    print("per case (exact: the found set equals the expected set)")
    print(per_case_text(runs), "\n")
    print("diagnosis CPU time as a share of the run's training CPU time")
    print(cost_text(costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
