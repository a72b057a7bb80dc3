"""The demo as a benchmark: ``retro demo`` with its arguments, its summary.json (with the demo's own
record of the machine and its load) kept with the run's provenance (bench/report.py) in
bench/results/demo.json (the source of the demo's numbers in docs/RESULTS.md and the README).

    python bench/demo.py --out runs/demo_bench --no-progress     # the default demo, 20+ min on 2 cores
    RETRO_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FAISS_SIMD_LEVEL=AVX2 \
        python bench/demo.py --out runs/demo_avx2 --no-progress --tag avx2   # held to AVX2

--tag TAG writes bench/results/demo_TAG.json instead (the other arguments are retro demo's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

RESULTS = report.RESULTS_DIR / "demo.json"


def main(argv: list[str]) -> None:
    import retro.cli

    results = RESULTS
    if "--tag" in argv:
        at = argv.index("--tag")
        results = RESULTS.with_name(f"demo_{argv[at + 1]}.json")
        argv = argv[:at] + argv[at + 2:]
    status = retro.cli.main(["demo", *argv])
    if status:
        raise SystemExit(status)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs") / "demo"
    summary = json.loads((out / "summary.json").read_text())
    machine = summary["machine"]  # the demo's own: its threads and the load as it began
    report.write_result(results, summary, threads=machine["threads"], load_before=machine["load_before"])
    print(f"wrote {results}")


if __name__ == "__main__":
    main(sys.argv[1:])
