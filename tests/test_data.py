"""Tests of bpexp.data: sources, validation, splits, manipulations and order.

The file loaders (.npz, .csv, IDX) read files the tests write themselves; the IDX
parser is also checked by hypothesis on random shapes and element types.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp.config import DataConfig
from bpexp.data import Dataset, batches, check_arrays, epoch_order, load_dataset, load_idx, load_idx_folder
from bpexp.errors import DataError

# The class counts of the MNIST test set (t10k), as published with the dataset.
MNIST_T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def load(seed: int = 0, dtype: str = "float64", **data) -> Dataset:
    return load_dataset(DataConfig(**data), seed, dtype=dtype)


def all_labels(ds) -> np.ndarray:
    return np.concatenate([s.y for s in (ds.train, ds.val, ds.test) if s is not None])


# ------------------------------------------------------------------ splits


def test_split_is_seeded_and_reproducible():
    a, b, c = load(0), load(0), load(1)
    assert a.fingerprint() == b.fingerprint()
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        np.testing.assert_array_equal(sa.X, sb.X)
        np.testing.assert_array_equal(sa.y, sb.y)
    assert a.fingerprint() != c.fingerprint()


def test_split_is_stratified_and_partitions_the_data():
    ds = load(0, name="digits", val_fraction=0.2, test_fraction=0.2)
    total = np.bincount(all_labels(ds))
    assert total.sum() == 1797  # every digit sample lands in exactly one split
    for split, share in ((ds.val, 0.2), (ds.test, 0.2), (ds.train, 0.6)):
        counts = np.bincount(split.y, minlength=10)
        # stratified: each class gets its share, up to rounding per class
        assert np.all(np.abs(counts - share * total) <= 1.5), (counts, share * total)


def test_no_test_split_when_test_fraction_is_zero():
    ds = load(0, name="iris", test_fraction=0.0, val_fraction=0.3)
    assert ds.test is None
    assert len(ds.train) + len(ds.val) == 150
    assert len(ds.val) == 45


def test_standardisation_is_fitted_on_the_training_split_only():
    ds = load(0, name="wine")
    Xtr, Xval = ds.train.X[:, :-1], ds.val.X[:, :-1]
    np.testing.assert_allclose(Xtr.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Xtr.std(axis=0), 1.0, rtol=1e-12)
    # validation data went through the training statistics: near 0 but not exactly
    assert np.all(np.abs(Xval.mean(axis=0)) > 1e-6)
    assert np.abs(Xval.mean(axis=0)).max() < 1.0


def test_standardize_off_keeps_raw_features():
    ds = load(0, name="iris", standardize=False)
    raw = np.concatenate([ds.train.X[:, :-1], ds.val.X[:, :-1], ds.test.X[:, :-1]])
    from sklearn.datasets import load_iris

    np.testing.assert_array_equal(np.sort(raw, axis=0), np.sort(load_iris().data, axis=0))


def test_constant_features_stay_finite():
    ds = load(0, name="digits")  # digits has blank border pixels, constant in training
    assert np.isfinite(ds.train.X).all() and np.isfinite(ds.val.X).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_split_ends_in_a_constant_one_column(dtype):
    ds = load(0, dtype=dtype, name="digits")
    for split in (ds.train, ds.val, ds.test):
        assert split.X.dtype == np.dtype(dtype)
        assert split.y.dtype == np.int64
        np.testing.assert_array_equal(split.X[:, -1], 1.0)
    assert ds.n_features == 64
    assert ds.n_classes == 10


# ----------------------------------------------------------- manipulations


def test_per_class_keeps_n_training_samples_per_class():
    base = load(0, name="digits")
    ds = load(0, name="digits", per_class=7)
    np.testing.assert_array_equal(np.bincount(ds.train.y), [7] * 10)
    np.testing.assert_array_equal(ds.val.y, base.val.y)
    np.testing.assert_array_equal(ds.test.y, base.test.y)
    assert any("per_class" in note for note in ds.notes)


def test_imbalance_keeps_the_majority_and_shrinks_the_others():
    base = load(0, name="digits")
    ratio = 5.0
    ds = load(0, name="digits", imbalance=ratio, majority_class=3)
    before = np.bincount(base.train.y)
    after = np.bincount(ds.train.y, minlength=10)
    assert after[3] == before[3]
    target = before[3] / ratio
    others = np.delete(after, 3)
    assert np.all(np.abs(others - target) <= 1), (others, target)
    np.testing.assert_array_equal(ds.val.y, base.val.y)  # validation untouched
    np.testing.assert_array_equal(ds.test.y, base.test.y)


def test_imbalance_majority_class_must_exist():
    with pytest.raises(DataError, match="majority_class"):
        load(0, name="iris", imbalance=2.0, majority_class=5)


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_label_noise_only_on_train_and_the_right_fraction(noise):
    base = load(0, name="digits", standardize=False)
    ds = load(0, name="digits", standardize=False, label_noise=noise)
    np.testing.assert_array_equal(ds.train.X, base.train.X)  # same samples, only labels differ
    np.testing.assert_array_equal(ds.val.y, base.val.y)
    np.testing.assert_array_equal(ds.test.y, base.test.y)
    changed = ds.train.y != base.train.y
    n = len(changed)
    sd = np.sqrt(noise * (1 - noise) / n)  # binomial standard error of the share
    assert abs(changed.mean() - noise) < 4 * sd
    assert ds.train.y.min() >= 0 and ds.train.y.max() < 10
    assert any(str(int(changed.sum())) in note for note in ds.notes)


# -------------------------------------------------------------------- order


def test_epoch_order_fixed_sorted_shuffled():
    y = np.array([2, 0, 1, 0, 2, 1, 1])
    rng = np.random.default_rng(0)
    fixed = np.random.default_rng(9).permutation(len(y))
    assert epoch_order(len(y), "fixed", 1, y, rng, fixed) is fixed
    assert epoch_order(len(y), "fixed", 5, y, rng, fixed) is fixed
    sorted_order = epoch_order(len(y), "sorted", 1, y, rng, None)
    np.testing.assert_array_equal(y[sorted_order], np.sort(y))
    np.testing.assert_array_equal(sorted_order, [1, 3, 2, 5, 6, 0, 4])  # stable within a class
    a = epoch_order(len(y), "shuffled", 1, y, np.random.default_rng(4), None)
    b = epoch_order(len(y), "shuffled", 1, y, np.random.default_rng(4), None)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(len(y)))
    shuffles = [tuple(epoch_order(50, "shuffled", e, np.zeros(50), rng, None)) for e in range(3)]
    assert len(set(shuffles)) == 3  # a new permutation every epoch


@given(n=st.integers(1, 200), size=st.integers(1, 64))
def test_batches_cover_every_sample_once(n, size):
    spans = list(batches(n, size))
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(b - a == size for a, b in spans[:-1])
    assert 0 < spans[-1][1] - spans[-1][0] <= size
    assert all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:]))


# -------------------------------------------------------------- validation


def test_check_arrays_accepts_clean_data_and_casts():
    X, y = check_arrays(np.arange(6, dtype=np.int32).reshape(3, 2), np.array([0.0, 1.0, 2.0]), "x")
    assert X.dtype == np.float64 and y.dtype == np.int64


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_arrays_refuses_non_finite_X(bad):
    X = np.zeros((4, 3))
    X[2, 1] = bad
    with pytest.raises(DataError, match=r"where: X holds 1 NaN or inf.*row 2, column 1"):
        check_arrays(X, np.zeros(4, dtype=int), "where")


@pytest.mark.parametrize(
    ("y", "pattern"),
    [
        (np.array([0.0, 1.5, 1.0]), "labels must be integers"),
        (np.array(["a", "b", "a"]), "labels must be integers"),
        (np.array([0.0, np.nan, 1.0]), "labels must be integers"),
        (np.array([0, -1, 1]), "labels must be >= 0"),
        (np.zeros((3, 2)), "one-dimensional"),
        (np.array([0, 1]), "3 rows but y has 2 labels"),
    ],
)
def test_check_arrays_refuses_bad_labels(y, pattern):
    with pytest.raises(DataError, match=pattern):
        check_arrays(np.zeros((3, 2)), y, "here")


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 20),
    d=st.integers(1, 5),
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=20),
    seed=st.integers(0, 2**16),
)
def test_check_arrays_round_trips_valid_input(n, d, labels, seed):
    y = np.resize(np.array(labels), n)
    X = np.random.default_rng(seed).standard_normal((n, d))
    X2, y2 = check_arrays(X, y.astype(np.float32), "p")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)


def test_unknown_dataset_name():
    cfg = DataConfig.model_construct(**{**DataConfig().model_dump(), "name": "nope"})  # skip the spec check
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset(cfg, 0)


# ---------------------------------------------------------------- .npz files


def write_npz(path: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    y = np.arange(60) % 3
    arrays = {"X_train": X[:30], "y_train": y[:30], "X_val": X[30:45], "y_val": y[30:45], "X_test": X[45:], "y_test": y[45:]}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_keeps_its_own_splits(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    ds = load_dataset(DataConfig(path=str(path)), 0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 15, 15)
    assert ds.name == "d.npz"
    np.testing.assert_array_equal(ds.train.y, np.arange(30) % 3)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"X_val": None}, "missing array 'X_val'"),
        ({"y_test": None}, "X_test and y_test go together"),
        ({"y_train": np.arange(29) % 3}, "30 rows but y has 29 labels"),
        ({"y_train": np.arange(30) % 3 + 0.5}, "labels must be integers"),
        ({"y_train": np.where(np.arange(30) % 3 == 1, 0, np.arange(30) % 3)}, "class 1 has no training sample"),
        ({"X_val": np.zeros((15, 4))}, "different numbers of features"),
        ({"y_train": np.zeros(30, int), "y_val": np.zeros(15, int), "y_test": np.zeros(15, int)}, "at least two classes"),
        # a label far past the others: one short line, no allocation per class
        ({"y_val": np.r_[np.arange(14) % 3, 2**40]}, r"class 3 has no training sample \(1099511627774 of the classes"),
    ],
)
def test_npz_errors_name_the_file_and_problem(tmp_path, overrides, pattern):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(DataConfig(path=str(path)), 0)
    assert "bad.npz" in str(info.value)


def test_missing_file(tmp_path):
    for name in ("gone.npz", "gone.csv"):
        with pytest.raises(DataError, match=f"{name}: no such file"):
            load_dataset(DataConfig(path=str(tmp_path / name)), 0)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1,2\n")
    with pytest.raises(DataError, match="unknown file type"):
        load_dataset(DataConfig(path=str(path)), 0)


# ------------------------------------------------------------------ .csv files


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


def test_csv_named_label_column(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[f"{a:.3f}", ["setosa", "virginica"][i % 2], f"{b:.3f}"] for i, (a, b) in enumerate(rng.standard_normal((40, 2)))]
    path = write_csv(tmp_path / "flowers.csv", ["petal", "species", "sepal"], rows)
    ds = load_dataset(DataConfig(path=str(path), label_column="species", standardize=False, test_fraction=0.0), 0)
    assert ds.feature_names == ["petal", "sepal"]
    assert ds.n_features == 2 and ds.n_classes == 2
    # text labels are numbered in sorted order; features keep their values
    by_row = {(r[0], r[2]): r[1] for r in rows}
    for x, label in zip(ds.train.X, ds.train.y):
        assert ["setosa", "virginica"][label] == by_row[(f"{x[0]:.3f}", f"{x[1]:.3f}")]


def test_csv_with_a_byte_order_mark_and_blank_lines(tmp_path):
    path = tmp_path / "excel.csv"
    body = "\n".join(f"{i % 2},{i}.5" for i in range(20))
    path.write_bytes(("label,x\n" + body + "\n\n").encode("utf-8-sig"))
    ds = load_dataset(DataConfig(path=str(path), test_fraction=0.0), 0)
    assert len(ds.train) + len(ds.val) == 20 and ds.feature_names == ["x"]


def test_csv_integer_labels_keep_their_values(tmp_path):
    rows = [[i % 3, i * 0.5] for i in range(30)]
    path = write_csv(tmp_path / "int.csv", ["label", "x"], rows)
    ds = load_dataset(DataConfig(path=str(path), standardize=False, test_fraction=0.0), 0)
    for x, label in zip(ds.train.X, ds.train.y):
        assert label == int(round(x[0] / 0.5)) % 3


@pytest.mark.parametrize(
    ("header", "rows", "pattern"),
    [
        (["a", "b"], [[1, 0], [2, 1]], "no label column 'label' \\(columns: a, b\\)"),
        (["label", "b"], [[0, 1], [1, "x"]], ":3: a feature is not a number"),
        (["label", "b"], [[0, 1], [1]], ":3: 1 fields, header has 2"),
        (["label", "b"], [[0, 1], [1.5, 2], [1, 3]], "labels must be integers"),
        (["label", "b"], [[0, 1], [1, "nan"], [1, 3]], "NaN or inf"),
        (["label", "b"], [[0, 1], ["", 2], [1, 3]], ":3: empty label in column 'label'"),
        (["label", "b"], [[0, 1], [], [1, "x"]], ":4: a feature is not a number"),  # blank lines keep the count
    ],
)
def test_csv_errors(tmp_path, header, rows, pattern):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(DataConfig(path=str(path)), 0)
    assert "bad.csv" in str(info.value)


# ------------------------------------------------------------------- IDX files

IDX_TYPES = {np.uint8: 0x08, np.int8: 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding (LeCun's MNIST page): 0, 0, type code, ndim, big-endian dims, big-endian body."""
    code = IDX_TYPES[array.dtype.type] if array.dtype.type in IDX_TYPES else IDX_TYPES[np.dtype(array.dtype.str.replace("<", ">"))]
    big = array.astype(array.dtype.newbyteorder(">"))
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    kind=st.sampled_from(["u1", "i1", "i2", "i4", "f4", "f8"]),
    compress=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_idx_round_trip(tmp_path_factory, shape, kind, compress, seed):
    rng = np.random.default_rng(seed)
    array = (rng.standard_normal(shape) * 100).astype(np.dtype(kind).newbyteorder("="))
    folder = tmp_path_factory.mktemp("idx")
    path = write_idx(folder / ("a-idx.gz" if compress else "a-idx"), array, compress)
    back = load_idx(path)
    assert back.shape == array.shape
    assert back.dtype.kind == array.dtype.kind and back.dtype.itemsize == array.dtype.itemsize
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_bad_magic(tmp_path, compress):
    path = tmp_path / ("x-idx3-ubyte.gz" if compress else "x-idx3-ubyte")
    raw = b"\x00\x01\x08\x01" + struct.pack(">I", 3) + b"abc"
    if compress:
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    with pytest.raises(DataError, match="bad magic number"):
        load_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_truncated(tmp_path, compress):
    data = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = tmp_path / ("t-idx.gz" if compress else "t-idx")
    if compress:
        path.write_bytes(gzip.compress(data[:-5]))
    else:
        path.write_bytes(data[:-5])
    with pytest.raises(DataError, match=r"t-idx(\.gz)?: IDX body holds 19 bytes, header promises 24"):
        load_idx(path)
    path.write_bytes(data[:6] if not compress else gzip.compress(data[:6]))
    with pytest.raises(DataError, match="truncated IDX header"):
        load_idx(path)


def test_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "s-idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 4), dtype=np.uint8)))[:-12])  # cut the gzip trailer
    with pytest.raises(DataError, match="s-idx.gz: cannot read"):
        load_idx(path)


@pytest.mark.parametrize("position", [12, 20, 60])
def test_idx_corrupt_gzip_stream(tmp_path, position):
    path = tmp_path / "c-idx.gz"
    data = bytearray(gzip.compress(idx_bytes(np.arange(2000, dtype=np.int32).astype(np.uint8).reshape(50, 40)), mtime=0))
    data[position] ^= 0xFF  # a flipped byte in the header, the deflate stream or the body
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="c-idx.gz: cannot read"):
        load_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_idx(tmp_path / "nope-idx.gz")


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_as_a_dataset(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 3), dtype=np.uint8)
    labels = (np.arange(40) % 4).astype(np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    X, y = load_idx_folder(tmp_path)
    assert X.shape == (40, 9)
    np.testing.assert_allclose(X, images.reshape(40, 9) / 255.0)
    np.testing.assert_array_equal(y, labels)
    ds = load_dataset(DataConfig(path=str(tmp_path)), 0)
    assert ds.n_features == 9 and ds.n_classes == 4
    assert len(ds.train) + len(ds.val) + len(ds.test) == 40


def test_idx_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_idx_folder(tmp_path / "none")
    write_idx(tmp_path / "a-images-idx3-ubyte", np.zeros((5, 2, 2), dtype=np.uint8), False)
    with pytest.raises(DataError, match=r"needs an '\*images\*idx\*' and a '\*labels\*idx\*' file"):
        load_idx_folder(tmp_path)
    write_idx(tmp_path / "a-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8), False)
    with pytest.raises(DataError, match="5 images but a-labels-idx1-ubyte has 4 labels"):
        load_idx_folder(tmp_path)


def test_vendored_mnist_is_the_t10k_set():
    ds = load(0, dtype="float32", name="mnist")
    counts = sum(np.bincount(s.y, minlength=10) for s in (ds.train, ds.val, ds.test))
    assert counts.sum() == 10_000
    assert counts.tolist() == MNIST_T10K_COUNTS
    assert ds.n_features == 784


# ------------------------------------------------------------------ synthetic


def test_synthetic_generators_are_seeded():
    a = load(5, name="moons", params={"n_samples": 100})
    b = load(5, name="moons", params={"n_samples": 100})
    assert a.fingerprint() == b.fingerprint()
    assert len(a.train) + len(a.val) + len(a.test) == 100
    assert a.n_classes == 2


def test_synthetic_bad_params_and_bundled_params():
    with pytest.raises(DataError, match="data.params: blobs"):
        load(0, name="blobs", params={"no_such_param": 1})
    with pytest.raises(DataError, match="takes no parameters"):
        load(0, name="iris", params={"n_samples": 10})


def test_summary_is_plain_json():
    import json

    ds = load(0, name="iris")
    summary = json.loads(json.dumps(ds.summary()))
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 150
    assert sum(summary["train_class_counts"]) == summary["n_train"]


def test_digits_read_without_sklearn_are_sklearns_digits():
    # the oracle: scikit-learn's own loader of the same package file
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from bpexp.data import _digits_without_sklearn

    X, y, names = _digits_without_sklearn()
    bunch = load_digits()
    assert np.array_equal(X, bunch.data) and X.dtype == np.float64
    assert np.array_equal(y, bunch.target) and y.dtype == bunch.target.dtype
    assert names == list(bunch.feature_names)
    # and loading digits really leaves scikit-learn unimported (what the fast path is for)
    code = ("import sys; from bpexp.config import DataConfig; from bpexp.data import load_dataset; "
            "load_dataset(DataConfig(name='digits'), 0); print('sklearn' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
