"""Shared fixtures. Tests mirror the package: tests/test_<module>.py."""

from __future__ import annotations

import numpy as np
import pytest

from bpexp.config import config_from_dict
from bpexp.data import load_dataset


@pytest.fixture(scope="session")
def digits64():
    """The digits dataset at float64, seed 0, with the default split."""
    cfg = config_from_dict({"data": {"name": "digits"}, "model": {"dtype": "float64"}})
    return load_dataset(cfg.data, seed=0, dtype="float64")


@pytest.fixture(scope="session")
def digits32():
    """The digits dataset at float32, seed 0, with the default split."""
    cfg = config_from_dict({"data": {"name": "digits"}})
    return load_dataset(cfg.data, seed=0, dtype="float32")


@pytest.fixture
def make_config():
    """Build a validated ExperimentConfig from nested keyword sections."""

    def _make(**sections):
        return config_from_dict(sections)

    return _make


@pytest.fixture
def rng():
    """A seeded numpy Generator."""
    return np.random.default_rng(12345)
