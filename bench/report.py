"""What every benchmark writes: the machine it ran on, and its table in docs/PERFORMANCE.md between
its own markers (`<!-- name:begin -->` ... `<!-- name:end -->`), the rest of the page untouched."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERFORMANCE_MD = ROOT / "docs" / "PERFORMANCE.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def machine_info() -> dict:
    """CPU model, core count, git commit, the command line and the UTC date."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    commit = os.environ.get("RETRO_GIT_COMMIT", "")  # the GPU machine gets a copy without .git
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": commit,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def update_performance_md(name: str, section: str, page: Path = PERFORMANCE_MD) -> None:
    """Replaces the text between the markers of `name` in page (docs/PERFORMANCE.md by default;
    section must start and end with the markers)."""
    begin, end = markers(name)
    text = page.read_text() if page.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text += "\n" + section + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
