"""The demo as a benchmark: ``retro demo`` with its arguments, its summary.json kept with the
machine, the commit, the command and the load around it in bench/results/demo.json (the source of
the demo's numbers in docs/RESULTS.md and the README).

    python bench/demo.py --out runs/demo_bench --no-progress     # the default demo, ~15-20 min
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

RESULTS = report.ROOT / "bench" / "results" / "demo.json"


def isa_flags() -> list[str]:
    """The CPU's vector extensions that retro's kernels use (from /proc/cpuinfo)."""
    flags = next((line.split(":", 1)[1].split() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), [])
    return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def main(argv: list[str]) -> None:
    import retro.cli

    load_before = os.getloadavg()
    status = retro.cli.main(["demo", *argv])
    if status:
        raise SystemExit(status)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs") / "demo"
    summary = json.loads((out / "summary.json").read_text())
    machine = {**report.machine_info(), "isa": isa_flags(),
               "threads": summary["config"]["threads"],
               "load_before": [round(x, 2) for x in load_before],
               "load_after": [round(x, 2) for x in os.getloadavg()]}
    RESULTS.write_text(json.dumps({"machine": machine, **summary}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
