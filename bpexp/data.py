"""Datasets: bundled, synthetic and user files; splits, manipulations and batching.

Nothing here touches the network. Bundled datasets come from scikit-learn's
package data and the MNIST test set vendored in ``bpexp/datasets/mnist``.

Every :class:`Dataset` is split into train/val/(test), standardised with
statistics of the training split only, and carries a trailing constant-1 column
in ``X`` so that the bias is a column of the weight matrix, as in the article
(ŷ = softmax(A·x) with x = (x₁, …, x_d, 1)).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from bpexp.config import BUNDLED_DATASETS, SYNTHETIC_DATASETS, DataConfig
from bpexp.errors import DataError

MNIST_DIR = Path(__file__).parent / "datasets" / "mnist"


@dataclass
class Split:
    """One split: ``X`` (n, d+1) with the constant-1 column last, ``y`` (n,) int64 labels."""

    X: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """Train, validation and optional test splits over ``n_classes`` classes."""

    name: str
    train: Split
    val: Split
    test: Split | None
    n_classes: int
    feature_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        """Input features, not counting the constant-1 bias column."""
        return self.train.X.shape[1] - 1

    def summary(self) -> dict:
        """Sizes, class counts per split and a fingerprint, as plain JSON values."""
        return {
            "name": self.name,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test) if self.test is not None else 0,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "train_class_counts": np.bincount(self.train.y, minlength=self.n_classes).tolist(),
            "val_class_counts": np.bincount(self.val.y, minlength=self.n_classes).tolist(),
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """A short SHA-256 of every array, so two runs can tell they saw the same data."""
        digest = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            if split is None:
                continue
            digest.update(np.ascontiguousarray(split.X).tobytes())
            digest.update(np.ascontiguousarray(split.y).tobytes())
        return digest.hexdigest()[:16]


# ------------------------------------------------------------------ raw sources


def _digits_without_sklearn() -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """scikit-learn's digits, read from its package data file without importing scikit-learn.

    ``load_digits`` reads the same file (``datasets/data/digits.csv.gz``: 64 pixel columns,
    then the label); importing scikit-learn (with SciPy) costs about a second, which every
    sweep worker process would pay once. Returns None when the file is not where it was.
    """
    import gzip
    import importlib.util

    found = importlib.util.find_spec("sklearn")  # locates the package; runs none of it
    if found is None or found.origin is None:
        return None
    path = Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        data = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    if data.shape[1] != 65:
        return None
    names = [f"pixel_{row}_{col}" for row in range(8) for col in range(8)]
    return data[:, :-1], data[:, -1].astype(int), names


def _load_bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if name == "mnist":
        X, y = load_idx_folder(MNIST_DIR)
        return X, y, None
    if name == "digits":
        fast = _digits_without_sklearn()
        if fast is not None:
            return fast
    from sklearn import datasets as skd

    loader = {
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
    }[name]
    bunch = loader()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target), list(map(str, bunch.feature_names))


_SYNTHETIC_DEFAULTS = {
    "blobs": {"n_samples": 600, "centers": 3, "n_features": 2, "cluster_std": 1.0},
    "circles": {"n_samples": 600, "noise": 0.1, "factor": 0.5},
    "moons": {"n_samples": 600, "noise": 0.2},
    "classification": {"n_samples": 1000, "n_features": 20, "n_informative": 10, "n_classes": 4},
}


def _make_synthetic(name: str, params: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets as skd

    maker = {
        "blobs": skd.make_blobs,
        "circles": skd.make_circles,
        "moons": skd.make_moons,
        "classification": skd.make_classification,
    }[name]
    kwargs = {**_SYNTHETIC_DEFAULTS[name], **params, "random_state": seed}
    try:
        X, y = maker(**kwargs)
    except TypeError as exc:
        raise DataError(f"data.params: {name} does not take these parameters ({exc})") from None
    except ValueError as exc:
        raise DataError(f"data.params: {name}: {exc}") from None
    return X, y


def load_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (MNIST format), gzip-compressed or raw.

    Returns:
        The array with the shape and dtype its header declares.

    Raises:
        DataError: for a missing file, a bad magic number or a truncated body.
    """
    path = Path(path)
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a corrupt deflate stream
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX body holds {len(raw) - header} bytes, header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx_folder(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an images/labels pair of IDX files from a folder (``*images*`` and ``*labels*``).

    Returns:
        ``X`` (n, pixels) float64 scaled to [0, 1] and ``y`` (n,) labels.

    Raises:
        DataError: when the folder lacks either file or their lengths differ.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if "images" in p.name and "idx" in p.name)
    labels = sorted(p for p in folder.iterdir() if "labels" in p.name and "idx" in p.name)
    if not images or not labels:
        raise DataError(f"{folder}: needs an '*images*idx*' and a '*labels*idx*' file")
    X = load_idx(images[0])
    y = load_idx(labels[0])
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{folder}: {images[0].name} has {X.shape[0]} images but {labels[0].name} has {y.shape[0]} labels")
    X = X.reshape(X.shape[0], -1).astype(np.float64)
    if X.max(initial=0) > 1:
        X /= 255.0
    return X, y


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz without pickled objects ({exc})") from None
    for key in ("X_train", "y_train", "X_val", "y_val"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r} (has {', '.join(sorted(arrays)) or 'none'})")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: X_test and y_test go together; only one is present")
    return arrays


def _load_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: drop a spreadsheet's BOM
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file")
    header = rows[0]
    body = [(line_no, r) for line_no, r in enumerate(rows[1:], start=2) if r]  # blank lines skipped, numbers kept
    if label_column not in header:
        raise DataError(f"{path}: no label column {label_column!r} (columns: {', '.join(header)})")
    label_index = header.index(label_column)
    features = [name for i, name in enumerate(header) if i != label_index]
    X = np.empty((len(body), len(features)))
    labels = []
    for k, (line_no, row) in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
        label = row[label_index].strip()
        if not label:
            raise DataError(f"{path}:{line_no}: empty label in column {label_column!r}")
        labels.append(label)
        values = [v for i, v in enumerate(row) if i != label_index]
        try:
            X[k] = [float(v) for v in values]
        except ValueError:
            raise DataError(f"{path}:{line_no}: a feature is not a number") from None
    return X, _encode_csv_labels(path, labels), features


def _encode_csv_labels(path: Path, labels: list[str]) -> np.ndarray:
    # Integer labels keep their values (so class k stays class k); other text labels are
    # numbered in sorted order.
    try:
        as_float = np.array([float(v) for v in labels])
    except ValueError:
        _, codes = np.unique(np.array(labels), return_inverse=True)
        return codes.astype(np.int64)
    return as_float


# ------------------------------------------------------------------- validation


def check_arrays(X: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one (X, y) pair and return it as (float64 2-D, int64 1-D).

    Raises:
        DataError: for lengths that differ, NaN or inf in X, labels that are not
            non-negative integers, or a non-2-D X.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        X = X.reshape(X.shape[0], -1)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be one-dimensional, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    if X.shape[0] == 0:
        raise DataError(f"{where}: no samples")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"{where}: X must be real numbers, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{where}: X holds {int(bad.sum())} NaN or inf values (first at row {row}, column {col})")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels must be integers, found non-integer values such as {y[y != np.round(y)][:1]}")
        y = y.astype(np.int64)
    else:
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return X, y


# --------------------------------------------------------------- split + prepare


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, taken) with ``fraction`` of every class taken, at least one where a class has two."""
    taken = []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        k = int(round(fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        else:
            k = 0
        taken.append(members[:k])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[taken_idx] = False
    return np.flatnonzero(mask), taken_idx


def load_dataset(cfg: DataConfig, seed: int, dtype: str = "float32") -> Dataset:
    """Load, split, manipulate and standardise the dataset a config names.

    Returns:
        A :class:`Dataset` whose X arrays carry the constant-1 bias column last.

    Raises:
        DataError: for an unknown dataset, a missing file or array, NaN or inf in X,
            non-integer labels, lengths that differ, or a class with no training sample.
    """
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    feature_names = None
    test: tuple[np.ndarray, np.ndarray] | None = None
    if cfg.path is not None:
        path = Path(cfg.path)
        name = path.name
        if path.is_dir():
            X, y = load_idx_folder(path)
            train, val, test = _split_three(*check_arrays(X, y, str(path)), cfg, rng)
        elif path.suffix == ".npz":
            arrays = _load_npz(path)
            train = check_arrays(arrays["X_train"], arrays["y_train"], f"{path}: X_train/y_train")
            val = check_arrays(arrays["X_val"], arrays["y_val"], f"{path}: X_val/y_val")
            if "X_test" in arrays:
                test = check_arrays(arrays["X_test"], arrays["y_test"], f"{path}: X_test/y_test")
            _check_widths(path, train, val, test)
        elif path.suffix == ".csv":
            X, y, feature_names = _load_csv(path, cfg.label_column)
            train, val, test = _split_three(*check_arrays(X, y, str(path)), cfg, rng)
        elif not path.exists():
            raise DataError(f"{path}: no such file")
        else:
            raise DataError(f"{path}: unknown file type {path.suffix!r}; use .npz, .csv or a folder of IDX files")
    else:
        name = cfg.name or "digits"
        if name in BUNDLED_DATASETS:
            if cfg.params:
                raise DataError(f"data.params: the bundled dataset {name!r} takes no parameters")
            X, y, feature_names = _load_bundled(name)
        elif name in SYNTHETIC_DATASETS:
            X, y = _make_synthetic(name, cfg.params, seed)
        else:
            raise DataError(f"data.name: unknown dataset {name!r}")
        train, val, test = _split_three(*check_arrays(X, y, name), cfg, rng)

    n_classes = int(max(train[1].max(), val[1].max(), test[1].max() if test is not None else 0)) + 1
    if n_classes < 2:
        raise DataError(f"{name}: every label is 0; a classifier needs at least two classes")
    _check_classes(name, train[1], n_classes)  # before the manipulations, which loop over the classes
    train = _manipulate(train, cfg, n_classes, rng, notes)
    _check_classes(name, train[1], n_classes)  # label noise may empty a small class

    mean, scale = _standardiser(train[0], cfg.standardize)
    splits = [_finish(X_, y_, mean, scale, dtype) for X_, y_ in (train, val)]
    test_split = _finish(*test, mean, scale, dtype) if test is not None else None
    return Dataset(name, splits[0], splits[1], test_split, n_classes, feature_names, notes)


def _check_classes(name: str, y: np.ndarray, n_classes: int) -> None:
    present = np.unique(y)
    if len(present) == n_classes:
        return
    # the smallest missing class is at most len(present) (pigeonhole), so a huge label allocates nothing
    missing = np.setdiff1d(np.arange(min(n_classes, len(present) + 1)), present)
    raise DataError(
        f"{name}: class {int(missing[0])} has no training sample "
        f"({n_classes - len(present)} of the classes 0..{n_classes - 1} have none)"
    )


def _check_widths(path: Path, *pairs: tuple[np.ndarray, np.ndarray] | None) -> None:
    widths = {pair[0].shape[1] for pair in pairs if pair is not None}
    if len(widths) > 1:
        raise DataError(f"{path}: the splits have different numbers of features: {sorted(widths)}")


def _split_three(X: np.ndarray, y: np.ndarray, cfg: DataConfig, rng: np.random.Generator):
    rest, test_idx = _stratified_split(y, cfg.test_fraction, rng) if cfg.test_fraction > 0 else (np.arange(len(y)), None)
    val_share = cfg.val_fraction / (1.0 - cfg.test_fraction)
    train_rel, val_rel = _stratified_split(y[rest], val_share, rng)
    train_idx, val_idx = rest[train_rel], rest[val_rel]
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"data: {len(y)} samples are too few to split into train and validation")
    test = (X[test_idx], y[test_idx]) if test_idx is not None and len(test_idx) else None
    return (X[train_idx], y[train_idx]), (X[val_idx], y[val_idx]), test


def _manipulate(train, cfg: DataConfig, n_classes: int, rng: np.random.Generator, notes: list[str]):
    """Apply the failure-mode manipulations to the training split only."""
    X, y = train
    if cfg.per_class is not None:
        keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: cfg.per_class] for c in range(n_classes)])
        keep.sort()
        X, y = X[keep], y[keep]
        notes.append(f"per_class: kept at most {cfg.per_class} training samples per class")
    if cfg.imbalance is not None:
        if cfg.majority_class >= n_classes:
            raise DataError(f"data.majority_class must be < {n_classes} classes; got {cfg.majority_class}")
        parts = []
        for c in range(n_classes):
            members = rng.permutation(np.flatnonzero(y == c))
            if c != cfg.majority_class:
                # each minority class keeps 1/ratio of the majority class's count
                target = max(1, int(round(np.sum(y == cfg.majority_class) / cfg.imbalance)))
                members = members[: min(target, len(members))]
            parts.append(members)
        keep = np.sort(np.concatenate(parts))
        X, y = X[keep], y[keep]
        notes.append(f"imbalance: class {cfg.majority_class} outnumbers each other class {cfg.imbalance:g}:1")
    if cfg.label_noise > 0:
        y = y.copy()
        flip = rng.random(len(y)) < cfg.label_noise
        # a different class, uniformly: add 1..K-1 modulo K
        y[flip] = (y[flip] + rng.integers(1, n_classes, size=int(flip.sum()))) % n_classes
        notes.append(f"label_noise: {int(flip.sum())} of {len(y)} training labels replaced")
    return X, y


def _standardiser(X: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    if not enabled:
        return np.zeros(X.shape[1]), np.ones(X.shape[1])
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0  # constant features (digits' blank border pixels) stay 0 after centring
    return mean, scale


def _finish(X: np.ndarray, y: np.ndarray, mean: np.ndarray, scale: np.ndarray, dtype: str) -> Split:
    out = np.empty((X.shape[0], X.shape[1] + 1), dtype=dtype)
    out[:, :-1] = (X - mean) / scale
    out[:, -1] = 1.0  # the article's constant input: the bias is the last column of A
    return Split(out, np.ascontiguousarray(y, dtype=np.int64))


# ------------------------------------------------------------------------ order


def epoch_order(n: int, order: str, epoch: int, y: np.ndarray, rng: np.random.Generator, fixed: np.ndarray | None) -> np.ndarray | None:
    """The sample order of one epoch, or None for the natural order.

    ``shuffled`` draws a new permutation each epoch, ``fixed`` reuses ``fixed``,
    ``sorted`` orders by label (the article's bad ordering, where consecutive
    updates pull towards one class at a time).
    """
    if order == "shuffled":
        return rng.permutation(n)
    if order == "fixed":
        return fixed
    return np.argsort(y, kind="stable")


def batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Yield (start, stop) of consecutive batches; the last may be smaller."""
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)
