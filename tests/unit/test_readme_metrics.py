"""The README's metrics table names every metric the edge and the services define."""

from __future__ import annotations

import re

from tests.dashboard import ROOT
from tests.unit.test_dashboard import defined_samples

SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def documented() -> set[str]:
    """Names in the first cell of the metrics table's rows; `a_b_c_total` / `_d_total`
    is shorthand for `a_b_d_total` (the short name replaces as many parts)."""
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        first: str | None = None
        for name in re.findall(r"`([a-z_]+)`", cell):
            if name.startswith("_") and first is not None:
                parts = first.split("_")
                name = "_".join(parts[: len(parts) - len(name.split("_")) + 1]) + name
            else:
                first = name
            names.add(name)
    return names


def base(sample: str) -> str:
    for suffix in SUFFIXES:
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


def test_every_metric_the_code_defines_is_in_the_readme_table() -> None:
    table = {base(name) for name in documented()}
    missing = sorted({base(s) for s in defined_samples()} - table)
    assert not missing, f"metrics missing from the README table: {missing}"
    assert "aqueduct_limit_admissions" in table
