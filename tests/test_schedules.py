"""Tests of bpexp.schedules: pure functions t -> λ.

Three kinds of check:

- against PyTorch's schedulers, live and step by step (torch is a test oracle only;
  these tests are skipped without it);
- edge values written by hand: t = 0, the cycle ends, the last step;
- hypothesis properties of the cyclical schedules.
"""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp import schedules as S
from bpexp.config import (
    ConstantSchedule,
    CosineSchedule,
    ExpRangeSchedule,
    OneCycleSchedule,
    SequenceSchedule,
    StepSchedule,
    TriangularSchedule,
    config_from_dict,
)
from bpexp.errors import ConfigError

REL = 1e-9  # values are ~1e-6 .. 1; abs guards the ones that reach 0
ABS = 1e-15


def close(a: float, b: float, rel: float = REL, abs_: float = ABS) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# ------------------------------------------------------------ PyTorch as oracle


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch is the test oracle for the schedules")


def torch_lrs(torch, make_scheduler, n: int, lr: float = 1.0, momentum: float = 0.9) -> list[float]:
    """λ read from the optimiser before each of n scheduler steps (one step per iteration)."""
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr, momentum=momentum)
    scheduler = make_scheduler(optimizer)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the deprecation of closed forms; not what we test
        for _ in range(n):
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()
            scheduler.step()
    return lrs


def assert_matches(ours, theirs: list[float], rel: float = REL) -> None:
    for t, expected in enumerate(theirs):
        got = ours(t)
        assert close(got, expected, rel=rel), f"t={t}: ours {got!r}, torch {expected!r}"


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
@pytest.mark.parametrize(("base_lr", "max_lr", "stepsize"), [(1e-3, 6e-3, 7), (0.025, 0.1, 20), (0.2, 1.0, 1)])
def test_cyclic_matches_torch_cycliclr(torch, mode, base_lr, max_lr, stepsize):
    gamma = 0.999
    n = 5 * 2 * stepsize + 3  # several full cycles and a little more
    theirs = torch_lrs(
        torch,
        lambda opt: torch.optim.lr_scheduler.CyclicLR(
            opt,
            base_lr=base_lr,
            max_lr=max_lr,
            step_size_up=stepsize,
            step_size_down=stepsize,
            mode=mode,
            gamma=gamma,
            cycle_momentum=False,
        ),
        n,
    )
    ours = {
        "triangular": lambda: S.triangular(base_lr, max_lr, stepsize),
        "triangular2": lambda: S.triangular2(base_lr, max_lr, stepsize),
        "exp_range": lambda: S.exp_range(base_lr, max_lr, stepsize, gamma),
    }[mode]()
    assert_matches(ours, theirs)


@pytest.mark.parametrize(
    ("total_steps", "pct_start", "div_factor", "final_div_factor"),
    [(100, 0.3, 25.0, 1e4), (97, 0.3, 25.0, 1e4), (250, 0.25, 10.0, 100.0), (13, 0.45, 25.0, 1e4)],
)
def test_one_cycle_matches_torch_onecyclelr(torch, total_steps, pct_start, div_factor, final_div_factor):
    max_lr = 0.4
    theirs = torch_lrs(
        torch,
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=max_lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        ),
        total_steps,  # t = 0 .. total_steps-1: every step torch allows
    )
    assert_matches(S.one_cycle(max_lr, total_steps, pct_start, div_factor, final_div_factor), theirs)


def test_one_cycle_torch_defaults(torch):
    theirs = torch_lrs(torch, lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=120), 120)
    assert_matches(S.one_cycle(0.1, 120), theirs)


@pytest.mark.parametrize(("restart_steps", "t_mult", "min_lr"), [(10, 1, 0.0), (7, 2, 1e-4), (5, 3, 1e-3)])
def test_sgdr_matches_torch_warm_restarts(torch, restart_steps, t_mult, min_lr):
    max_lr = 0.1
    theirs = torch_lrs(
        torch,
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=restart_steps, T_mult=t_mult, eta_min=min_lr
        ),
        300,
        lr=max_lr,
    )
    assert_matches(S.cosine(max_lr, None, min_lr, restart_steps=restart_steps, t_mult=t_mult), theirs)


@pytest.mark.parametrize(("total_steps", "min_lr"), [(50, 0.0), (137, 1e-3)])
def test_cosine_matches_torch_cosineannealinglr(torch, total_steps, min_lr):
    max_lr = 0.05
    theirs = torch_lrs(
        torch,
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=min_lr),
        total_steps + 1,  # up to T_max, where torch reaches min_lr; after it torch climbs back, we hold
        lr=max_lr,
    )
    # torch's form is recursive (a ratio of cosines times the previous λ), so allow its rounding
    assert_matches(S.cosine(max_lr, total_steps, min_lr), theirs, rel=1e-9)
    assert S.cosine(max_lr, total_steps, min_lr)(total_steps + 10) == min_lr


def test_step_and_exponential_match_torch(torch):
    theirs = torch_lrs(torch, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.5), 40, lr=0.3)
    assert_matches(S.step(0.3, 6, 0.5), theirs)
    # ExponentialLR stepped once per epoch: λ is constant within each of the 8-step epochs
    per_epoch = torch_lrs(torch, lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9), 6, lr=0.3)
    theirs = [per_epoch[t // 8] for t in range(48)]
    assert_matches(S.exponential(0.3, 0.9, 8), theirs)


# --------------------------------------------------------- edge values by hand


@pytest.mark.parametrize(
    "make",
    [
        lambda b, m, s: S.triangular(b, m, s),
        lambda b, m, s: S.triangular2(b, m, s),
        lambda b, m, s: S.exp_range(b, m, s, 1.0),
        lambda b, m, s: S.exp_range(b, m, s, 1.0, decay_bounds=True),
    ],
    ids=["triangular", "triangular2", "exp_range", "exp_range_bounds"],
)
def test_cycle_ends(make):
    base, top, s = 0.01, 0.04, 8
    lr = make(base, top, s)
    assert lr(0) == pytest.approx(base, rel=1e-12)  # not 0: λ starts at the base, never at zero
    assert lr(0) > 0
    assert lr(s // 2) == pytest.approx((base + top) / 2, rel=1e-12)
    assert lr(s) == pytest.approx(top, rel=1e-12)
    assert lr(2 * s) == pytest.approx(base, rel=1e-12)


def test_triangular_is_a_triangle():
    lr = S.triangular(0.1, 0.5, 4)
    expected = [0.1, 0.2, 0.3, 0.4, 0.5, 0.4, 0.3, 0.2, 0.1, 0.2]
    np.testing.assert_allclose(S.values(lr, 10), expected, rtol=1e-12)


def test_triangular2_halves_the_amplitude():
    base, top, s = 0.1, 0.9, 5
    lr = S.triangular2(base, top, s)
    assert lr(s) == pytest.approx(top)  # first peak: the full amplitude
    assert lr(3 * s) == pytest.approx(base + (top - base) / 2)  # second peak: half
    assert lr(5 * s) == pytest.approx(base + (top - base) / 4)  # third: a quarter
    assert lr(4 * s) == pytest.approx(base)  # every cycle still starts at the base


def test_triangular2_late_cycles_settle_on_the_base():
    # cycle > 1024: 2.0**(cycle - 1) overflows a float (PyTorch's CyclicLR raises there)
    lr = S.triangular2(0.1, 0.2, 1)
    assert lr(2 * 1100 + 1) == 0.1
    assert lr(10**7) == 0.1


def test_exp_range_default_decays_the_amplitude_only():
    base, top, s, gamma = 0.1, 0.5, 10, 0.99
    lr = S.exp_range(base, top, s, gamma)
    assert lr(0) == pytest.approx(base)
    assert lr(s) == pytest.approx(base + (top - base) * gamma**s)
    assert lr(2 * s) == pytest.approx(base)  # never below the base
    assert lr(10_000) >= base


def test_exp_range_decay_bounds_decays_both_bounds():
    base, top, s, gamma = 0.1, 0.5, 10, 0.99
    lr = S.exp_range(base, top, s, gamma, decay_bounds=True)
    for k in range(4):
        t = 2 * k * s  # a cycle's base point
        assert lr(t) == pytest.approx(base * gamma**t, rel=1e-12)
        assert lr(t + s) == pytest.approx(top * gamma ** (t + s), rel=1e-12)  # its peak


def test_one_cycle_ends():
    top, total = 0.5, 100
    lr = S.one_cycle(top, total)
    assert lr(0) == pytest.approx(top / 25, rel=1e-12)
    assert lr(29) == pytest.approx(top, rel=1e-12)  # phase 1 ends at 0.3·100 − 1
    assert lr(total - 1) == pytest.approx(top / 25 / 1e4, rel=1e-12)
    assert lr(total) == lr(total - 1) == lr(10 * total)  # held after the cycle
    assert max(S.values(lr, total)) == pytest.approx(top, rel=1e-12)


def test_one_cycle_tiny_runs_do_not_divide_by_zero():
    # pct_start·total_steps − 1 = 0: phase 1 is the single step t = 0 (PyTorch divides by zero there)
    lr = S.one_cycle(0.1, 2, pct_start=0.5)
    assert lr(0) == pytest.approx(0.1) and lr(1) == pytest.approx(0.1 / 25 / 1e4)
    assert S.one_cycle(0.1, 1)(0) == pytest.approx(0.1 / 25 / 1e4)


def test_cosine_ends():
    top, low, total = 0.2, 0.002, 100
    lr = S.cosine(top, total, low)
    assert lr(0) == top
    assert lr(total // 2) == pytest.approx((top + low) / 2)
    assert lr(total - 1) == pytest.approx(low + (top - low) * (1 + math.cos(math.pi * 99 / 100)) / 2)
    assert lr(total) == low and lr(5 * total) == low


def test_sgdr_restarts():
    lr = S.cosine(0.1, None, 0.0, restart_steps=10, t_mult=2)
    # periods 10, 20, 40: restarts at t = 10, 30, 70
    for restart in (0, 10, 30, 70):
        assert lr(restart) == pytest.approx(0.1)
    assert lr(29) == pytest.approx(0.05 * (1 + math.cos(math.pi * 19 / 20)))
    assert lr(20) == pytest.approx(0.05)  # halfway through the 20-step period


def test_last_step_of_every_schedule():
    n = 100  # the last step is t = 99
    last = n - 1
    cases = [
        (S.constant(0.1), 0.1),
        (S.step(0.1, 10, 0.5), 0.1 * 0.5**9),
        (S.exponential(0.1, 0.9, 10), 0.1 * 0.9**9),
        (S.triangular(0.1, 0.5, 5), 0.1 + 0.4 * 0.2),  # t/s = 19.8 in cycle 10: x = 0.8
        (S.triangular2(0.1, 0.5, 5), 0.1 + 0.4 * 0.2 / 2**9),
        (S.exp_range(0.1, 0.5, 5, 0.99), 0.1 + 0.4 * 0.2 * 0.99**99),
        (S.exp_range(0.1, 0.5, 5, 0.99, decay_bounds=True), (0.1 + 0.4 * 0.2) * 0.99**99),
        (S.one_cycle(0.5, n), 0.5 / 25 / 1e4),
        (S.cosine(0.5, n), 0.25 * (1 + math.cos(math.pi * 99 / 100))),
        (S.cosine(0.5, None, restart_steps=30), 0.25 * (1 + math.cos(math.pi * 9 / 30))),
    ]
    for schedule, expected in cases:
        assert schedule(last) == pytest.approx(expected, rel=1e-12), schedule
        assert S.values(schedule, n)[-1] == schedule(last)


# --------------------------------------------------------------------- combine


def test_combine_stage_boundaries():
    warm = S.constant(0.01)
    tri = S.triangular(0.1, 0.5, 5)
    tail = S.one_cycle(0.3, 50)
    lr = S.combine([(10, warm), (20, tri), (None, tail)])
    assert lr(0) == 0.01
    assert lr(9) == 0.01  # last step of stage 1
    assert lr(10) == tri(0) == 0.1  # stage 2 starts at its own t = 0
    assert lr(15) == tri(5) == pytest.approx(0.5)
    assert lr(29) == tri(19)  # last step of stage 2
    assert lr(30) == tail(0)  # stage 3 starts
    assert lr(79) == tail(49)
    assert lr(500) == tail(470)  # the last stage runs on


def test_combine_last_stage_with_a_length_runs_on():
    lr = S.combine([(3, S.constant(1.0)), (4, S.triangular(0.1, 0.2, 2))])
    assert lr(7) == S.triangular(0.1, 0.2, 2)(4)
    assert lr(9) == S.triangular(0.1, 0.2, 2)(6)


def test_schedules_are_picklable_values():
    lr = S.combine([(5, S.triangular(0.1, 0.2, 2)), (None, S.cosine(0.2, 10))])
    again = pickle.loads(pickle.dumps(lr))
    np.testing.assert_array_equal(S.values(again, 30), S.values(lr, 30))


def test_values():
    out = S.values(S.constant(0.5), 4)
    assert out.dtype == np.float64 and out.shape == (4,)
    assert S.values(S.constant(0.5), 0).shape == (0,)


# -------------------------------------------------------------- build_schedule


def schedule_cfg(schedule: dict, lr: float = 0.4):
    return config_from_dict({"optim": {"lr": lr}, "schedule": schedule}).schedule


def build(schedule: dict, lr: float = 0.4, steps_per_epoch: int = 10, total_steps: int = 200):
    return S.build_schedule(
        schedule_cfg(schedule, lr), default_lr=lr, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )


def test_build_triangular_defaults():
    lr = build({"name": "triangular"})
    # base = max/4 = 0.1 (Smith's rule of thumb); stepsize = 4 epochs = 40 iterations
    assert lr(0) == pytest.approx(0.1)
    assert lr(40) == pytest.approx(0.4)
    assert lr(80) == pytest.approx(0.1)


def test_build_stepsize_epochs_and_iterations():
    lr = build({"name": "triangular2", "stepsize_epochs": 2.5, "base_lr": 0.05, "max_lr": 0.25})
    assert lr(0) == pytest.approx(0.05) and lr(25) == pytest.approx(0.25)  # 2.5 · 10 = 25
    assert lr(75) == pytest.approx(0.15)  # second peak: half the amplitude
    lr = build({"name": "triangular", "stepsize": 3})
    assert lr(3) == pytest.approx(0.4) and lr(6) == pytest.approx(0.1)
    # a tiny stepsize in epochs still gives at least one iteration
    lr = build({"name": "triangular", "stepsize_epochs": 0.01}, steps_per_epoch=10)
    assert lr(1) == pytest.approx(0.4)


def test_build_exp_range():
    lr = build({"name": "exp_range", "gamma": 0.99, "stepsize": 5, "decay_bounds": True})
    assert lr(10) == pytest.approx(0.1 * 0.99**10)
    lr = build({"name": "exp_range", "gamma": 0.99, "stepsize": 5})
    assert lr(10) == pytest.approx(0.1)


def test_build_classic_decays():
    assert build({"name": "constant"})(123) == 0.4
    assert build({"name": "constant", "lr": 0.02})(0) == 0.02
    lr = build({"name": "step", "step_epochs": 2, "factor": 0.5})  # 20 iterations
    assert lr(19) == 0.4 and lr(20) == pytest.approx(0.2)
    lr = build({"name": "exponential", "gamma": 0.9})
    assert lr(9) == 0.4 and lr(10) == pytest.approx(0.36)


def test_build_one_cycle_and_cosine_span_the_run():
    lr = build({"name": "one_cycle"}, total_steps=200)
    assert lr(0) == pytest.approx(0.4 / 25) and lr(199) == pytest.approx(0.4 / 25 / 1e4)
    assert lr(59) == pytest.approx(0.4)
    lr = build({"name": "cosine", "min_lr": 0.01}, total_steps=200)
    assert lr(0) == pytest.approx(0.4) and lr(100) == pytest.approx(0.205) and lr(200) == 0.01
    lr = build({"name": "cosine", "restart_epochs": 1.5, "t_mult": 2})  # T_0 = 15
    assert lr(15) == pytest.approx(0.4) and lr(45) == pytest.approx(0.4)


def test_build_sequence():
    lr = build(
        {
            "name": "sequence",
            "stages": [
                {"name": "constant", "lr": 0.01, "epochs": 1},  # 10 iterations
                {"name": "one_cycle", "iterations": 50},
                {"name": "cosine"},  # runs on: spans the remaining 200 − 60 = 140
            ],
        }
    )
    assert lr(9) == 0.01
    assert lr(10) == pytest.approx(0.4 / 25)  # one_cycle starts at its t = 0
    assert lr(59) == pytest.approx(0.4 / 25 / 1e4)  # its last step
    assert lr(60) == pytest.approx(0.4)  # cosine starts
    assert lr(130) == pytest.approx(0.2)  # halfway through its 140 steps
    assert lr(200) == 0.0


def test_build_from_pydantic_classes_directly():
    cfg = SequenceSchedule(
        stages=[TriangularSchedule(iterations=20, stepsize=5, max_lr=0.2), CosineSchedule(max_lr=0.2)]
    )
    lr = S.build_schedule(cfg, default_lr=0.9, steps_per_epoch=4, total_steps=100)
    assert lr(0) == pytest.approx(0.05) and lr(5) == pytest.approx(0.2) and lr(20) == pytest.approx(0.2)
    assert lr(100) == 0.0  # cosine spanned 80 steps
    one = S.build_schedule(OneCycleSchedule(iterations=30), default_lr=0.3, steps_per_epoch=4, total_steps=100)
    assert one(29) == pytest.approx(0.3 / 25 / 1e4)  # the stage's own length wins over total_steps


def test_build_reports_what_the_spec_cannot_see():
    # base_lr is checked against max_lr only when both are given; max_lr defaults to optim.lr
    with pytest.raises(ConfigError, match="base_lr"):
        build({"name": "triangular", "base_lr": 0.5}, lr=0.1)
    with pytest.raises(ConfigError, match="min_lr"):
        build({"name": "cosine", "min_lr": 0.5}, lr=0.1)
    with pytest.raises(ConfigError, match=r"stages\[1\]"):
        build({"name": "sequence", "stages": [{"name": "constant", "iterations": 3}, {"name": "cosine", "min_lr": 1}]})


def test_lr_bounds():
    assert S.lr_bounds(ConstantSchedule(), 0.1) == (0.1, 0.1)
    assert S.lr_bounds(StepSchedule(factor=0.5), 0.1) == pytest.approx((0.05, 0.1))
    assert S.lr_bounds(TriangularSchedule(), 0.4) == pytest.approx((0.1, 0.4))
    assert S.lr_bounds(ExpRangeSchedule(base_lr=0.01, max_lr=0.1), 0.4) == pytest.approx((0.01, 0.1))
    assert S.lr_bounds(OneCycleSchedule(), 0.5) == pytest.approx((0.5 / 25 / 1e4, 0.5))
    assert S.lr_bounds(CosineSchedule(min_lr=0.001), 0.5) == (0.001, 0.5)
    seq = SequenceSchedule(stages=[ConstantSchedule(lr=1.0, iterations=2), CosineSchedule(max_lr=0.5)])
    assert S.lr_bounds(seq, 0.1) == (0.0, 1.0)
    # exact bounds over a run: 3 step drops in 40 iterations
    low, high = S.lr_bounds(StepSchedule(step_epochs=1, factor=0.5), 0.8, steps_per_epoch=10, total_steps=40)
    assert (low, high) == pytest.approx((0.1, 0.8))


# ------------------------------------------------------------------ properties

rates = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False, allow_infinity=False)
stepsizes = st.integers(min_value=1, max_value=500)
iterations = st.integers(min_value=0, max_value=100_000)
EPS = 1e-12  # float slack on comparisons


@st.composite
def bounds(draw):
    a, b = draw(rates), draw(rates)
    if math.isclose(a, b, rel_tol=1e-6):
        b = a * 2
    return min(a, b), max(a, b)


@settings(max_examples=200, deadline=None)
@given(bounds(), stepsizes, iterations)
def test_triangular_within_bounds_and_periodic(lr_range, stepsize, t):
    base, top = lr_range
    lr = S.triangular(base, top, stepsize)
    value = lr(t)
    assert base * (1 - EPS) <= value <= top * (1 + EPS)
    assert math.isclose(lr(t + 2 * stepsize), value, rel_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(bounds(), stepsizes, iterations)
def test_triangular2_never_exceeds_the_previous_peak(lr_range, stepsize, t):
    base, top = lr_range
    lr = S.triangular2(base, top, stepsize)
    cycle = 1 + t // (2 * stepsize)
    assert base * (1 - EPS) <= lr(t) <= top * (1 + EPS)
    if cycle > 1:
        previous_peak = lr((2 * cycle - 3) * stepsize)  # the middle of the previous cycle
        assert lr(t) <= previous_peak * (1 + EPS)
    assert lr(t + 2 * stepsize) <= lr(t) * (1 + EPS)


@settings(max_examples=200, deadline=None)
@given(bounds(), stepsizes, iterations, st.floats(min_value=0.9, max_value=1.0), st.booleans())
def test_exp_range_never_above_triangular(lr_range, stepsize, t, gamma, decay_bounds):
    base, top = lr_range
    tri = S.triangular(base, top, stepsize)(t)
    exp = S.exp_range(base, top, stepsize, gamma, decay_bounds=decay_bounds)(t)
    assert exp <= tri * (1 + EPS)
    if not decay_bounds:
        assert exp >= base * (1 - EPS)


# ---------------------------------------------------------- invalid arguments


def test_core_imports_nothing_heavy():
    import ast

    tree = ast.parse(open(S.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "bisect", "math", "numbers", "functools", "typing", "numpy", "bpexp"}


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda: S.constant(0), "lr"),
        (lambda: S.constant(float("nan")), "lr"),
        (lambda: S.step(0.1, 0, 0.5), "step_iterations"),
        (lambda: S.step(0.1, 2.5, 0.5), "step_iterations"),
        (lambda: S.step(0.1, 10, 1.5), "factor"),
        (lambda: S.exponential(0.1, 0.0, 10), "gamma"),
        (lambda: S.exponential(0.1, 0.9, 0), "steps_per_epoch"),
        (lambda: S.triangular(0.1, 0.5, 0), "stepsize"),
        (lambda: S.triangular(0.5, 0.1, 4), "base_lr"),
        (lambda: S.triangular(0.1, 0.1, 4), "base_lr"),
        (lambda: S.triangular(-0.1, 0.1, 4), "base_lr"),
        (lambda: S.triangular2(0.1, -1.0, 4), "max_lr"),
        (lambda: S.exp_range(0.1, 0.5, 4, 1.5), "gamma"),
        (lambda: S.exp_range(0.1, 0.5, 4, 0.0), "gamma"),
        (lambda: S.one_cycle(0.1, 0), "total_steps"),
        (lambda: S.one_cycle(0.1, 100, pct_start=1.0), "pct_start"),
        (lambda: S.one_cycle(0.1, 100, div_factor=0), "div_factor"),
        (lambda: S.one_cycle(0.1, 100, final_div_factor=-1), "final_div_factor"),
        (lambda: S.cosine(0.1, 0), "total_steps"),
        (lambda: S.cosine(0.1, None), "total_steps"),
        (lambda: S.cosine(0.1, 100, min_lr=0.2), "min_lr"),
        (lambda: S.cosine(0.1, 100, min_lr=-0.01), "min_lr"),
        (lambda: S.cosine(0.1, 100, restart_steps=0), "restart_steps"),
        (lambda: S.cosine(0.1, 100, restart_steps=10, t_mult=0), "t_mult"),
        (lambda: S.combine([]), "stages"),
        (lambda: S.combine([(None, S.constant(0.1)), (10, S.constant(0.1))]), r"stages\[0\]"),
        (lambda: S.combine([(0, S.constant(0.1)), (None, S.constant(0.1))]), r"stages\[0\]"),
        (lambda: S.combine([(5, 0.1)]), r"stages\[0\]"),
        (lambda: S.values(S.constant(0.1), -1), "'n'"),
        (lambda: S.triangular(0.1, 0.5, 4)(-1), "'t'"),
    ],
)
def test_invalid_arguments_name_the_parameter(make, param):
    with pytest.raises(ValueError, match=param):
        make()


def test_error_message_gives_range_and_value():
    with pytest.raises(ValueError) as info:
        S.triangular(0.1, 0.5, 0)
    message = str(info.value)
    assert "'stepsize'" in message and "triangular" in message and "[1, inf)" in message and "Got 0" in message
    with pytest.raises(ValueError, match=r"\(0\.0, 1\.0\]\. Got 1\.5"):
        S.exp_range(0.1, 0.5, 4, 1.5)
