"""How fast bpexp's numpy core trains, next to PyTorch, scikit-learn and the GEMM floor.

Two benchmarks, both run in one go:

1. epoch: one epoch of minibatch SGD (batch 128) on MNIST-shaped synthetic data
   (60,000 x 784 float32, 10 classes; class means plus noise, so it is learnable),
   for the perceptron 784-10 and the MLP 784-128-10. Contenders:
   - bpexp: ``bpexp.train.run_epoch``, the step loop train() runs, with the
     shuffling of ``bpexp.data.epoch_order`` (evaluation excluded);
   - torch: the same model, batch, dtype, learning rate and thread count, in a plain
     loop (randperm, index, zero_grad, forward, cross_entropy, backward, step);
   - sklearn: ``MLPClassifier(solver="sgd", batch_size=128, max_iter=1)``, plain SGD
     (no momentum, no L2), ``hidden_layer_sizes=()`` for the perceptron;
   - GEMM floor: only the matrix products of that epoch. They are recorded from one
     real bpexp step (same functions, operand shapes, memory layouts and output buffers)
     and replayed once per batch on consecutive slices of X, nothing else.
   Goals: bpexp <= 0.7x torch, <= 1.3x the GEMM floor, well ahead of sklearn
   (read as <= 0.8x: on these GEMM-bound shapes the floor caps any numpy MLP's lead).

2. small: bpexp's whole ``train()`` on the bundled digits (100 epochs, batch 32),
   against the equivalent PyTorch loop. Both evaluate loss and accuracy on the
   training and validation splits before training, after every epoch, and at the
   end (torch also on the test split, as train() does). bpexp also records its
   History norms; torch reads no per-step loss. Goal: bpexp at least 5x faster.

Every contender is timed ``--repeats`` times, interleaved, after a warm-up, with
numpy's BLAS, OpenMP and torch limited to the same number of threads (1 by
default: on a small shared machine, spinning BLAS and OpenMP workers of one
contender steal the cores of the next, and the figures measure the scheduler);
the tables show medians and ratios of medians, in wall-clock time, and the same
ratios in this process's CPU time, which other load on the machine disturbs less.

    python benchmarks/train_speed.py            # the full run (about a minute)
    python benchmarks/train_speed.py --quick    # a smoke run (seconds)
    python benchmarks/train_speed.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    available_cores,
    describe_machine,
    import_torch,
    interleaved,
    limit_threads,
    log,
    machine_info,
    ratio,
    summary,
    table,
)

from bpexp.config import config_from_dict  # noqa: E402
from bpexp.data import batches, epoch_order, load_dataset  # noqa: E402
from bpexp.model import Model, build_model  # noqa: E402
from bpexp.optim import build_optimizer  # noqa: E402
from bpexp.train import EpochBuffers, make_schedule, run_epoch, train  # noqa: E402

MODELS = ("perceptron", "mlp")
HIDDEN = 128  # the MLP 784-128-10 of the article's TensorFlow example
N_CLASSES = 10
N_FEATURES = 784
EPOCH_BATCH = 128
EPOCH_LR = 0.05
SMALL_BATCH = 32  # bpexp's default batch size
SMALL_LR = 0.1  # bpexp's default λ

GOAL_VS_TORCH = 0.7  # bpexp epoch time / torch epoch time
GOAL_VS_FLOOR = 1.3  # bpexp epoch time / GEMM floor
GOAL_VS_SKLEARN = 0.8  # "well ahead": at least 1.25x faster than MLPClassifier (the GEMM floor bounds any numpy MLP)
GOAL_SMALL_SPEEDUP = 5.0  # torch loop time / bpexp train() time on digits


# ------------------------------------------------------------------------ data


def mnist_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped synthetic data: X (n, 785) float32 with bpexp's constant-1 column last, y (n,).

    Each class has a random mean; a sample is 0.1 x its class mean plus unit
    Gaussian noise, so the classes overlap yet a linear model can learn them.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((N_CLASSES, N_FEATURES), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, size=n)
    X = np.empty((n, N_FEATURES + 1), dtype=np.float32)
    X[:, :N_FEATURES] = rng.standard_normal((n, N_FEATURES), dtype=np.float32)
    X[:, :N_FEATURES] += np.float32(0.1) * means[y]
    X[:, N_FEATURES] = 1.0
    return X, y


def accuracy_of(predicted: np.ndarray, y: np.ndarray) -> float:
    """Share of correct predictions."""
    return float(np.mean(np.asarray(predicted) == y))


# ---------------------------------------------------------------- contenders


def bpexp_epoch(kind: str, X: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], Model]:
    """One epoch per call through bpexp's own step loop, set up as train() sets it up."""
    n = len(y)
    cfg = config_from_dict(
        {"model": {"kind": kind, "hidden": [HIDDEN]}, "optim": {"name": "sgd", "lr": EPOCH_LR, "batch_size": EPOCH_BATCH}}
    )
    model = build_model(cfg.model, X.shape[1] - 1, N_CLASSES, cfg.seed)
    optimizer = build_optimizer(cfg.optim)
    schedule, _, _ = make_schedule(cfg, n)
    buffers = EpochBuffers.for_batches(EPOCH_BATCH, X)
    order_rng = np.random.default_rng([cfg.seed, 2])
    state = {"epoch": 0, "t": 0}

    def epoch() -> None:
        state["epoch"] += 1
        order = epoch_order(n, "shuffled", state["epoch"], y, order_rng, None)
        done = run_epoch(model, optimizer, X, y, EPOCH_BATCH, schedule, state["t"], order=order, buffers=buffers)
        state["t"] = done.t

    return epoch, model


def torch_net(torch, kind: str, n_inputs: int):
    """The torch twin of a bpexp model."""
    nn = torch.nn
    if kind == "perceptron":
        return nn.Linear(n_inputs, N_CLASSES)
    return nn.Sequential(nn.Linear(n_inputs, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))


def torch_epoch(torch, kind: str, X: np.ndarray, y: np.ndarray):
    """One epoch per call of the plain PyTorch loop, on the same data without bpexp's 1-column."""
    Xt = torch.from_numpy(np.ascontiguousarray(X[:, :-1]))
    yt = torch.from_numpy(y)
    torch.manual_seed(0)
    net = torch_net(torch, kind, Xt.shape[1])
    opt = torch.optim.SGD(net.parameters(), lr=EPOCH_LR)
    cross_entropy = torch.nn.functional.cross_entropy
    n = len(y)

    def epoch() -> None:
        perm = torch.randperm(n)
        for lo in range(0, n, EPOCH_BATCH):
            idx = perm[lo : lo + EPOCH_BATCH]
            opt.zero_grad()
            loss = cross_entropy(net(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()

    def predict(rows: int) -> np.ndarray:
        with torch.no_grad():
            return net(Xt[:rows]).argmax(dim=1).numpy()

    return epoch, predict


def sklearn_epoch(kind: str, X: np.ndarray, y: np.ndarray):
    """One MLPClassifier fit per call: max_iter=1 is one epoch of plain minibatch SGD."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X784 = np.ascontiguousarray(X[:, :-1])
    holder: dict[str, Any] = {"seed": 0}

    def epoch() -> None:
        holder["seed"] += 1
        clf = MLPClassifier(
            hidden_layer_sizes=(HIDDEN,) if kind == "mlp" else (),
            solver="sgd",
            batch_size=EPOCH_BATCH,
            max_iter=1,
            learning_rate_init=EPOCH_LR,
            momentum=0.0,  # plain SGD, as the other contenders
            nesterovs_momentum=False,
            alpha=0.0,  # no L2
            random_state=holder["seed"],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # one epoch never converges: expected
            clf.fit(X784, y)
        holder["clf"] = clf

    def predict(rows: int) -> np.ndarray:
        return holder["clf"].predict(X784[:rows])

    return epoch, predict


# ----------------------------------------------------------------- GEMM floor

BATCH = object()  # stands for the batch X (B, D+1) in a recorded product
BATCH_T = object()  # stands for its transpose


def record_matmuls(model: Model, Xb: np.ndarray, yb: np.ndarray) -> list[tuple]:
    """The matrix products (np.matmul and np.dot calls) of one training step of ``model`` on ``Xb``.

    Returns:
        One ``(function, a, b, out)`` per call, with an operand that views ``Xb`` replaced by
        :data:`BATCH` or :data:`BATCH_T`, so that it can be pointed at another batch.
    """
    calls: list[tuple] = []
    real = {"matmul": np.matmul, "dot": np.dot}

    def spy(name):
        def call(a, b, *args, out=None, **kwargs):
            calls.append((real[name], a, b, out))
            return real[name](a, b, *args, out=out, **kwargs)

        return call

    np.matmul, np.dot = spy("matmul"), spy("dot")
    try:
        model.loss_and_grad(Xb, yb, None)
    finally:
        np.matmul, np.dot = real["matmul"], real["dot"]

    def tag(arr):
        if isinstance(arr, np.ndarray) and np.shares_memory(arr, Xb):
            return BATCH if arr.shape == Xb.shape else BATCH_T
        return arr

    if not calls:
        raise RuntimeError("the model made no np.matmul or np.dot call; the GEMM floor would be empty")
    return [(fn, tag(a), tag(b), out) for fn, a, b, out in calls]


def describe_call(a, b, out, rows: int, width: int) -> str:
    """'(128, 785) @ (785, 128)' for one recorded call."""

    def shape(arr):
        if arr is BATCH:
            return (rows, width)
        if arr is BATCH_T:
            return (width, rows)
        return arr.shape

    return f"{shape(a)} @ {shape(b)}"


def gemm_floor_epoch(kind: str, X: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], list[str]]:
    """One epoch of nothing but the model's matrix products, per call.

    Each batch is a consecutive slice of X, read from memory once as any epoch
    must; the other operands are the recording model's own weights and buffers.

    Returns:
        The epoch function and a description of one step's products.
    """
    cfg = config_from_dict({"model": {"kind": kind, "hidden": [HIDDEN]}})
    model = build_model(cfg.model, X.shape[1] - 1, N_CLASSES, cfg.seed)
    n = len(y)
    sizes = sorted({hi - lo for lo, hi in batches(n, EPOCH_BATCH)})
    plans = {}
    for rows in sizes:
        Xb = np.array(X[:rows])  # a separate buffer, as the gathered batch is in bpexp
        plans[rows] = record_matmuls(model, Xb, y[:rows])
    described = [describe_call(a, b, out, max(sizes), X.shape[1]) for _, a, b, out in plans[max(sizes)]]

    def epoch() -> None:
        for lo, hi in batches(n, EPOCH_BATCH):
            Xs = X[lo:hi]
            XsT = Xs.T
            for product, a, b, out in plans[hi - lo]:
                a = Xs if a is BATCH else XsT if a is BATCH_T else a
                b = Xs if b is BATCH else XsT if b is BATCH_T else b
                product(a, b, out=out)

    return epoch, described


def gather_epoch(X: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """One epoch of nothing but the shuffled batch gather run_epoch does, per call.

    Not a goal: it shows how much of the gap to the GEMM floor the shuffling alone costs.
    """
    n = len(y)
    buf = np.empty((EPOCH_BATCH, X.shape[1]), dtype=X.dtype)
    rng = np.random.default_rng(0)

    def epoch() -> None:
        order = rng.permutation(n)
        for lo, hi in batches(n, EPOCH_BATCH):
            X.take(order[lo:hi], axis=0, out=buf[: hi - lo], mode="clip")

    return epoch


# ------------------------------------------------------------------ benchmarks


def run_epoch_benchmark(n: int, repeats: int, torch, with_sklearn: bool) -> dict[str, Any]:
    """Benchmark 1: one epoch of each model, every contender interleaved."""
    log(f"epoch benchmark: {n} x {N_FEATURES} float32, {N_CLASSES} classes, batch {EPOCH_BATCH}, SGD λ={EPOCH_LR}")
    X, y = mnist_like(n)
    check_rows = min(n, 10_000)
    results: dict[str, Any] = {}
    for kind in MODELS:
        log(f"  {kind}: timing {repeats} interleaved epochs per contender")
        contenders: dict[str, Callable[[], None]] = {}
        predictors: dict[str, Callable[[int], np.ndarray]] = {}
        contenders["bpexp"], model = bpexp_epoch(kind, X, y)
        predictors["bpexp"] = lambda rows, model=model: model.predict(X[:rows])
        if torch is not None:
            contenders["torch"], predictors["torch"] = torch_epoch(torch, kind, X, y)
        if with_sklearn:
            contenders["sklearn"], predictors["sklearn"] = sklearn_epoch(kind, X, y)
        contenders["gemm_floor"], products = gemm_floor_epoch(kind, X, y)
        contenders["gather"] = gather_epoch(X, y)
        times = interleaved(contenders, repeats)
        entry: dict[str, Any] = {name: summary(t) for name, t in times.items()}
        for name in ("torch", "sklearn"):
            entry.setdefault(name, None)
        # accuracy on the first rows of the training data after the timed epochs: every contender learnt
        entry["train_accuracy"] = {name: accuracy_of(predict(check_rows), y[:check_rows]) for name, predict in predictors.items()}
        entry["gemm_per_step"] = products
        for key, stat in (("ratios", "median_s"), ("cpu_ratios", "cpu_median_s")):
            med = {name: (entry[name] or {}).get(stat) for name in ("bpexp", "torch", "sklearn", "gemm_floor", "gather")}
            entry[key] = {
                "bpexp/torch": ratio(med["bpexp"], med["torch"]),
                "bpexp/gemm_floor": ratio(med["bpexp"], med["gemm_floor"]),
                "bpexp/sklearn": ratio(med["bpexp"], med["sklearn"]),
                "bpexp/(gemm_floor+gather)": ratio(med["bpexp"], med["gemm_floor"] + med["gather"]),
            }
        results[kind] = entry
    return {"n": n, "features": N_FEATURES, "classes": N_CLASSES, "batch": EPOCH_BATCH, "lr": EPOCH_LR, "repeats": repeats, "models": results}


def torch_train(torch, kind: str, dataset, epochs: int) -> Callable[[], float]:
    """The PyTorch loop equivalent to bpexp's train() on ``dataset``; each call returns its final val accuracy."""
    strip = lambda a: torch.from_numpy(np.ascontiguousarray(a[:, :-1]))  # noqa: E731 (bpexp's 1-column off)
    splits = {"train": dataset.train, "val": dataset.val}
    if dataset.test is not None:
        splits["test"] = dataset.test
    tensors = {name: (strip(split.X), torch.from_numpy(split.y)) for name, split in splits.items()}
    Xt, yt = tensors["train"]
    n = len(yt)
    cross_entropy = torch.nn.functional.cross_entropy

    def evaluate(net, names) -> dict[str, tuple[float, float]]:
        out = {}
        with torch.no_grad():
            for name in names:
                X_, y_ = tensors[name]
                z = net(X_)
                out[name] = (cross_entropy(z, y_).item(), (z.argmax(dim=1) == y_).double().mean().item())
        return out

    def run() -> float:
        torch.manual_seed(0)
        net = torch_net(torch, kind, Xt.shape[1])
        opt = torch.optim.SGD(net.parameters(), lr=SMALL_LR)
        history = [evaluate(net, ("train", "val"))]
        for _ in range(epochs):
            perm = torch.randperm(n)
            for lo in range(0, n, SMALL_BATCH):
                idx = perm[lo : lo + SMALL_BATCH]
                opt.zero_grad()
                loss = cross_entropy(net(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()
            history.append(evaluate(net, ("train", "val")))
        final = evaluate(net, tuple(tensors))
        return final["val"][1]

    return run


def run_small_benchmark(epochs: int, repeats: int, torch) -> dict[str, Any]:
    """Benchmark 2: bpexp's whole train() on digits against the equivalent PyTorch loop."""
    log(f"small-data benchmark: digits, {epochs} epochs, batch {SMALL_BATCH}, SGD λ={SMALL_LR}, evaluation every epoch on both sides")
    results: dict[str, Any] = {}
    for kind in MODELS:
        cfg = config_from_dict(
            {
                "data": {"name": "digits"},
                "model": {"kind": kind, "hidden": [HIDDEN]},
                "optim": {"name": "sgd", "lr": SMALL_LR, "batch_size": SMALL_BATCH},
                "train": {"max_epochs": epochs},
            }
        )
        dataset = load_dataset(cfg.data, cfg.seed, dtype=cfg.model.dtype)
        log(f"  {kind}: timing {repeats} interleaved runs per contender")
        accuracy: dict[str, float] = {}

        def bpexp_run() -> None:
            result = train(cfg, dataset)
            accuracy["bpexp"] = result.final["val_accuracy"]

        contenders: dict[str, Callable[[], None]] = {"bpexp": bpexp_run}
        if torch is not None:
            torch_run = torch_train(torch, kind, dataset, epochs)

            def torch_timed() -> None:
                accuracy["torch"] = torch_run()

            contenders["torch"] = torch_timed
        times = interleaved(contenders, repeats)
        entry: dict[str, Any] = {name: summary(t) for name, t in times.items()}
        entry.setdefault("torch", None)
        entry["n_train"] = len(dataset.train)
        entry["steps"] = epochs * -(-len(dataset.train) // SMALL_BATCH)
        entry["val_accuracy"] = accuracy
        entry["speedup"] = ratio((entry["torch"] or {}).get("median_s"), entry["bpexp"]["median_s"])
        entry["cpu_speedup"] = ratio((entry["torch"] or {}).get("cpu_median_s"), entry["bpexp"]["cpu_median_s"])
        results[kind] = entry
    return {"dataset": "digits", "epochs": epochs, "batch": SMALL_BATCH, "lr": SMALL_LR, "repeats": repeats, "models": results}


# ----------------------------------------------------------------------- report


def goals(epoch: dict[str, Any] | None, small: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each goal with its measured value and whether it is met (None where a column is missing)."""
    out = []

    def add(name: str, model: str, value: float | None, limit: float, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        out.append({"goal": name, "model": model, "value": value, "limit": limit, "met": met})

    if epoch:
        for kind, entry in epoch["models"].items():
            add(f"epoch: bpexp / torch <= {GOAL_VS_TORCH}", kind, entry["ratios"]["bpexp/torch"], GOAL_VS_TORCH, True)
            add(f"epoch: bpexp / GEMM floor <= {GOAL_VS_FLOOR}", kind, entry["ratios"]["bpexp/gemm_floor"], GOAL_VS_FLOOR, True)
            add(f"epoch: bpexp / sklearn <= {GOAL_VS_SKLEARN}", kind, entry["ratios"]["bpexp/sklearn"], GOAL_VS_SKLEARN, True)
    if small:
        for kind, entry in small["models"].items():
            add(f"small: torch / bpexp >= {GOAL_SMALL_SPEEDUP:g}", kind, entry["speedup"], GOAL_SMALL_SPEEDUP, False)
    return out


def fmt_s(value: dict[str, Any] | None) -> str:
    return "-" if not value else f"{value['median_s'] * 1000:.1f} ms"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_report(report: dict[str, Any]) -> None:
    """The human-readable tables."""
    print(f"bpexp training speed — {report['date']}")
    print(f"command: {report['command']}")
    for line in describe_machine(report["machine"]):
        print(f"  {line}")
    print(f"threads for numpy BLAS, OpenMP and torch: {report['threads']}")
    epoch = report.get("epoch")
    if epoch:
        print()
        print(
            f"1. one epoch, {epoch['n']} x {epoch['features']} float32, {epoch['classes']} classes, batch {epoch['batch']}, "
            f"plain SGD; median of {epoch['repeats']} interleaved runs"
        )
        rows = []
        for kind, e in epoch["models"].items():
            r = e["ratios"]
            rows.append(
                [kind, fmt_s(e["bpexp"]), fmt_s(e["torch"]), fmt_s(e["sklearn"]), fmt_s(e["gemm_floor"]), fmt_s(e["gather"]),
                 fmt_x(r["bpexp/torch"]), fmt_x(r["bpexp/gemm_floor"]), fmt_x(r["bpexp/sklearn"]), fmt_x(r["bpexp/(gemm_floor+gather)"])]
            )  # fmt: skip
        headers = ["model", "bpexp", "torch", "sklearn", "GEMM floor", "gather", "bpexp/torch", "bpexp/floor", "bpexp/sklearn", "bpexp/(floor+gather)"]
        print(table(headers, rows))
        print("  gather: the shuffled batch gather alone (not a goal; every shuffled epoch pays it, torch included)")
        for kind, e in epoch["models"].items():
            r = e["cpu_ratios"]
            print(
                f"  {kind}: the same ratios in CPU time of this process (less sensitive to other load): "
                f"bpexp/torch {fmt_x(r['bpexp/torch'])}, bpexp/floor {fmt_x(r['bpexp/gemm_floor'])}, bpexp/sklearn {fmt_x(r['bpexp/sklearn'])}"
            )
        for kind, e in epoch["models"].items():
            acc = ", ".join(f"{k} {v:.3f}" for k, v in e["train_accuracy"].items())
            print(f"  {kind}: training accuracy after the timed epochs: {acc}")
            print(f"  {kind}: GEMM floor per step: {'; '.join(e['gemm_per_step'])}")
    small = report.get("small")
    if small:
        print()
        print(
            f"2. whole training run, {small['dataset']}, {small['epochs']} epochs, batch {small['batch']}, plain SGD, "
            f"evaluation (train + val) every epoch on both sides; median of {small['repeats']} interleaved runs"
        )
        rows = []
        for kind, e in small["models"].items():
            acc = e["val_accuracy"]
            rows.append(
                [kind, str(e["steps"]), fmt_s(e["bpexp"]), fmt_s(e["torch"]), fmt_x(e["speedup"]),
                 f"{acc['bpexp']:.3f}" if "bpexp" in acc else "-", f"{acc['torch']:.3f}" if "torch" in acc else "-"]
            )  # fmt: skip
        print(table(["model", "steps", "bpexp train()", "torch loop", "torch/bpexp", "val acc bpexp", "val acc torch"], rows))
        for kind, e in small["models"].items():
            print(f"  {kind}: torch/bpexp in CPU time of this process (less sensitive to other load): {fmt_x(e['cpu_speedup'])}")
    print()
    print("goals:")
    for g in report["goals"]:
        state = "n/a (column skipped)" if g["met"] is None else ("met" if g["met"] else "MISSED")
        value = "-" if g["value"] is None else f"{g['value']:.2f}"
        print(f"  {g['goal']:34s} {g['model']:10s} {value:>6s}  {state}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: n=4000, 2 repeats, 3 digits epochs")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the tables")
    parser.add_argument("--repeats", type=int, help="timed runs per contender (default 5; 2 with --quick)")
    parser.add_argument("--n", type=int, help="samples in the epoch benchmark (default 60000; 4000 with --quick)")
    parser.add_argument("--digits-epochs", type=int, help="epochs of the small-data benchmark (default 100; 3 with --quick)")
    parser.add_argument(
        "--threads", type=int, default=1, help=f"threads for BLAS, OpenMP and torch (default 1; this machine has {available_cores()} cores)"
    )
    parser.add_argument("--only", choices=("epoch", "small"), help="run one benchmark only")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn column")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.n = args.n or (4000 if args.quick else 60_000)
    args.digits_epochs = args.digits_epochs or (3 if args.quick else 100)
    for name in ("repeats", "n", "digits_epochs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch = None if args.no_torch else import_torch()
    if not args.no_sklearn:
        import sklearn.neural_network  # noqa: F401 (loads scipy's BLAS before the limit is set)
    limiter = limit_threads(args.threads, torch)  # noqa: F841 (holds the limit until exit)
    report: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/train_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "threads": args.threads,
        "machine": machine_info(torch),
        "epoch": None,
        "small": None,
    }
    if args.only in (None, "epoch"):
        report["epoch"] = run_epoch_benchmark(args.n, args.repeats, torch, not args.no_sklearn)
    if args.only in (None, "small"):
        report["small"] = run_small_benchmark(args.digits_epochs, args.repeats, torch)
    report["goals"] = goals(report["epoch"], report["small"])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
