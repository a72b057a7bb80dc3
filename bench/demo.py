"""The demo as a benchmark: ``retro demo`` with its arguments, its summary.json kept with the
machine, the commit, the command and the load around it in bench/results/demo.json (the source of
the demo's numbers in docs/RESULTS.md and the README).

    python bench/demo.py --out runs/demo_bench --no-progress     # the default demo, ~14 min on 2 cores
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

RESULTS = report.ROOT / "bench" / "results" / "demo.json"


def main(argv: list[str]) -> None:
    import retro.cli

    status = retro.cli.main(["demo", *argv])
    if status:
        raise SystemExit(status)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs") / "demo"
    summary = json.loads((out / "summary.json").read_text())
    # the demo's own machine record (CPU, ISA, load before and after) plus the commit and command
    summary["machine"] = {**report.machine_info(), **summary.get("machine", {})}
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
