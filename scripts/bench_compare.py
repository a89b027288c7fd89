"""`make bench`'s harness: ../shared/bench/compare.py, with Aqueduct measured twice in
the same run, under two targets served by the same processes:

- `aqueduct`: the admin key, which has no limits, so nothing is reserved or settled;
- `aqueduct-limited`: an ordinary key whose rpm, token and concurrency limits are far
  above what the bench sends (scripts/bench_ab.py `create_limited_key`): every request
  reserves quota at auth and settles it, the path real keys take.

The shared harness (read-only here) measures one gateway target. The second is added
to its list of targets when the harness validates the first: by then the gateway is up,
so the key can be made through its admin API. Both then run every cell back to back
with the others (order rotated per cell), and the tables show both rows and their
ratios to LiteLLM. Arguments are compare.py's (see `compare.py --help`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by the harness's own Python, outside the project's venv

from scripts.bench_ab import create_limited_key  # noqa: E402

BENCH = Path(os.environ.get("BENCH_DIR") or REPO.parent / "shared" / "bench").resolve()
GATEWAY = "aqueduct"
LIMITED = "aqueduct-limited"


def load_compare(bench: Path) -> Any:
    spec = importlib.util.spec_from_file_location("compare", bench / "compare.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"bench: no harness at {bench}/compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_limited_target(compare: Any) -> None:
    """Make compare.main add the limited-key target right after the gateway's own."""
    validate = compare.validate
    added = False

    def validate_then_add(target: dict[str, Any], expected: str) -> Any:
        nonlocal added
        if target["name"] == GATEWAY and not added:
            added = True
            # compare.main's list of targets, which its loop is walking: a target
            # appended now is validated, sampled and measured like the others.
            targets = sys._getframe(1).f_locals.get("targets")
            if not isinstance(targets, list) or target not in targets:
                raise SystemExit("bench: compare.py has changed; cannot add the limited key")
            key = create_limited_key(target["url"].removesuffix("/v1"), target["key"])
            targets.append({**target, "name": LIMITED, "key": key})
        return validate(target, expected)

    compare.validate = validate_then_add


def main() -> int:
    compare = load_compare(BENCH)
    with_limited_target(compare)
    sys.argv[0] = str(BENCH / "compare.py")
    return int(compare.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
