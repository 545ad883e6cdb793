"""Every spec shipped in experiments/ validates as the kind of file it is."""

from __future__ import annotations

from bpexp.config import load_config, load_yaml


def test_every_shipped_spec_validates_as_its_kind():
    from pathlib import Path

    from bpexp.batch.spec import load_batch
    from bpexp.clr import load_protocol
    from bpexp.sweep.spec import load_sweep_spec

    specs = sorted((Path(__file__).parent.parent / "experiments").rglob("*.yaml"))
    kinds = []
    for spec in specs:
        raw = load_yaml(spec)
        if "sweep" in raw:
            load_sweep_spec(spec)
            kinds.append("sweep")
        elif "experiments" in raw:
            load_batch(spec)
            kinds.append("batch")
        elif "tasks" in raw:
            load_protocol(spec)
            kinds.append("clr")
        else:
            load_config(spec)
            kinds.append("train")
    assert {"sweep", "batch", "clr", "train"} <= set(kinds), kinds
