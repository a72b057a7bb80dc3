"""Where a benchmark's numbers come from: the commit and whether the tree was dirty, the machine (CPU,
ISA flags, the core's SIMD and bfloat16 kernels), the threads, the library versions, the command
line and the load average before and after the run.

`capture` records it for a new result (report.write_result puts it under "provenance"); `recorded`
reads it back from any result JSON, the older layouts included (a "machine" block or top-level
fields, merged runs under "machine"/"runs"), with None for whatever a JSON does not hold; `describe`
is the line every rendered table starts with.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from retro.machine import load_average, machine_info

ROOT = Path(__file__).resolve().parents[1]
LOAD_AT_START = load_average()  # this module is imported as a benchmark starts: before its work
COMMIT = re.compile(r"[0-9a-f]{7,40}")
# (name, distribution) of the libraries whose versions a timing depends on
LIBRARIES = (("retro", "retro-lm"), ("torch", "torch"), ("faiss", "faiss-cpu"), ("numpy", "numpy"))


# What benchmarks write themselves (result JSONs, plots, rendered tables): a change there is an
# output of a run, not a change of the code the next run measures.
OUTPUTS = ("bench/results", "docs")


def git_state() -> tuple[str | None, bool | None]:
    """The commit checked out (short hash) and whether tracked files other than OUTPUTS differ from
    it (a run after another, whose tables are rewritten, measures the same code). A copy without
    .git (the GPU machine) gets the commit from RETRO_GIT_COMMIT; its dirtiness is unknown (None)."""
    given = os.environ.get("RETRO_GIT_COMMIT")
    if given:
        return given, None

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        outside_outputs = [".", *(f":(exclude){path}" for path in OUTPUTS)]
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *outside_outputs)
        return git("rev-parse", "--short", "HEAD"), bool(changed)
    except (OSError, subprocess.CalledProcessError):
        return None, None


def library_versions() -> dict[str, str | None]:
    """Python's version and each library's: the imported module's, else the installed one's, else None."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, distribution in LIBRARIES:
        version = getattr(sys.modules.get(name), "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                pass
        versions[name] = None if version is None else str(version)
    return versions


def command_line() -> str:
    """The command as typed from the repository root: `python bench/x.py --flag value`."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join(["python", shown, *sys.argv[1:]])


def one_minute(load: object) -> float | None:
    """The 1-minute load average of a recorded load: [1, 5, 15]-minute list or a bare number."""
    if isinstance(load, list):
        load = load[0] if load else None
    return float(load) if isinstance(load, (int, float)) else None


def is_loaded(load_before: object, load_after: object, threads: int | None) -> bool | None:
    """True when the 1-minute load before or after exceeds the threads the run used: the run alone
    accounts for at most its threads, so something else competed for the cores. None if unknown."""
    loads = [x for x in (one_minute(load_before), one_minute(load_after)) if x is not None]
    if threads is None or not loads:
        return None
    return max(loads) > threads


# environment variables that hold a library below what the CPU has (an emulated AVX2 machine)
FORCED_ISA = ("RETRO_SIMD", "RETRO_BF16", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
              "FAISS_SIMD_LEVEL")


def faiss_simd() -> str | None:
    """The SIMD level faiss dispatches to (FAISS_SIMD_LEVEL forces one), if faiss is imported."""
    faiss = sys.modules.get("faiss")
    try:
        return str(faiss.SIMDConfig.get_level_name()) if faiss is not None else None
    except AttributeError:  # a faiss without dynamic dispatch
        return None


def capture(threads: int | None, load_before: list[float] | None = None) -> dict:
    """The provenance of a result written now. threads: the most a measurement used (None for a
    result that times nothing); load_before: the load as the timed work began (default: as this
    module was imported)."""
    commit, dirty = git_state()
    machine = {key: value for key, value in machine_info().items() if key != "load_before"}
    before = LOAD_AT_START if load_before is None else load_before
    after = load_average()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command_line(),
        **machine,
        "faiss_simd": faiss_simd(),
        "forced_isa": {name: os.environ[name] for name in FORCED_ISA if name in os.environ},
        "threads": threads,
        "versions": library_versions(),
        "load_before": before,
        "load_after": after,
        "loaded": is_loaded(before, after, threads),
    }


# --- reading it back ----------------------------------------------------------------------------


def recorded(result: dict) -> list[dict]:
    """The runs behind a result JSON (one, or those a merged JSON lists under machine.runs), each
    with capture()'s keys plus device, load_note and note; None where the JSON holds nothing."""
    if "provenance" in result:
        return [_complete({**result["provenance"], "device": _device(result)})]
    machine = result.get("machine")
    if isinstance(machine, str):  # paper_results.json: "x86_64, 2 threads"
        machine = {"note": f"machine as recorded: {machine}"}
    machine = machine or {}
    top = {key: result[key] for key in ("git_commit", "commit", "command", "date", "cpu", "cpus", "retro_simd",
                                          "card") if key in result}
    runs = machine.get("runs") or [{}]  # a merged JSON's own top-level fields were joined by hand
    fields = [{**top, **machine, **run} if len(runs) > 1 else {**top, **machine} for run in runs]
    return [_complete(_from_machine(f)) for f in fields]


def _device(result: dict) -> str | None:
    machine = result.get("machine") if isinstance(result.get("machine"), dict) else {}
    return machine.get("device_name") or machine.get("gpu") or result.get("card")


def _from_machine(fields: dict) -> dict:
    """The older layouts: report.machine_info() plus each benchmark's own keys."""
    load = fields.get("load_average") or {}
    return {
        "git_commit": fields.get("git_commit") or fields.get("commit"),
        "date": fields.get("date"),
        "command": fields.get("command"),
        "cpu": fields.get("cpu"),
        "cores": fields.get("cores", fields.get("cpus")),
        "isa": fields.get("isa"),
        "simd": fields.get("retro_simd", fields.get("simd")),
        "threads": fields.get("threads"),
        "device": fields.get("device_name") or fields.get("gpu") or fields.get("card"),
        "versions": {"python": fields.get("python"), "retro": fields.get("retro_version"),
                     "torch": fields.get("torch"), "faiss": fields.get("faiss_version"),
                     "numpy": fields.get("numpy_version")},
        "load_before": fields.get("load_before", load.get("before")),
        "load_after": fields.get("load_after", load.get("after")),
        "load_note": fields["load"] if isinstance(fields.get("load"), str) else None,
        "note": fields.get("note"),
    }


def _complete(run: dict) -> dict:
    keys = ("git_commit", "git_dirty", "date", "command", "cpu", "cores", "isa", "simd", "bf16_kernel",
            "faiss_simd", "forced_isa", "threads", "device", "versions", "load_before", "load_after", "loaded", "load_note", "note")
    return {key: run.get(key) for key in keys}


def shown_command(command: str) -> str:
    """Older JSONs stored `bench/x.py --flags` (python implied); newer ones the whole command."""
    return f"python {command}" if command.split(" ", 1)[0].endswith(".py") else command


def describe(result: dict, threads: int | None = None) -> str:
    """The provenance line of a rendered table. threads: the most threads its measurements used,
    as the result's rows say (older JSONs recorded none, or those of one process); the load is
    compared with it. Default: the recorded threads."""
    runs = recorded(result)
    parts = [_describe_run(run, threads) for run in runs]
    if len(parts) == 1:
        return f"Run: {parts[0]}"
    return " ".join(f"Run {i} of {len(parts)}: {part}" for i, part in enumerate(parts, 1))


def _describe_run(run: dict, threads_of_rows: int | None) -> str:
    missing = "not recorded"
    threads = run["threads"] if threads_of_rows is None else threads_of_rows
    commit = run["git_commit"]
    if commit is None:
        commit_text = f"commit {missing}"
    elif COMMIT.fullmatch(commit):
        dirty = {True: "dirty tree", False: "clean tree", None: f"tree state {missing}"}[run["git_dirty"]]
        commit_text = f"commit `{commit}` ({dirty})"
    else:
        commit_text = f"commit as recorded by hand: \"{commit}\""
    command = f"`{shown_command(run['command'])}`" if run["command"] else f"command {missing}"
    threads_text = (f"threads {missing}" if threads is None else
                    f"{threads} thread(s)" + (" (from its rows)" if run["threads"] is None else ""))
    versions = run["versions"] or {}
    machine = [
        run["cpu"] or f"CPU {missing}",
        f"{run['cores']} cores" if run["cores"] else f"cores {missing}",
        f"ISA {' '.join(run['isa'])}" if run["isa"] else f"ISA flags {missing}",
        f"SIMD `{run['simd']}`" if run["simd"] else f"SIMD {missing}",
        f"bf16 kernel `{run['bf16_kernel']}`" if run["bf16_kernel"] else f"bf16 kernel {missing}",
        *([f"faiss SIMD `{run['faiss_simd']}`"] if run["faiss_simd"] else []),
        *([f"forced by {' '.join(f'{k}={v}' for k, v in run['forced_isa'].items())}"]
          if run["forced_isa"] else []),
        *([run["device"]] if run["device"] else []),
        threads_text,
    ]
    version_text = ", ".join(f"{name} {versions.get(name) or missing}"
                             for name in ("python", *(name for name, _ in LIBRARIES)))
    text = (f"{commit_text}, {run['date'] or f'date {missing}'}, {command}. Machine: {', '.join(machine)}. "
            f"Versions: {version_text}. Load: {_describe_load(run, threads)}.")
    return text + (f" Note: {run['note']}." if run["note"] else "")


def _describe_load(run: dict, threads: int | None) -> str:
    before, after = one_minute(run["load_before"]), one_minute(run["load_after"])
    if before is None and after is None:
        return f"as recorded: \"{run['load_note']}\"" if run["load_note"] else "not recorded"
    text = "1-minute average " + ", ".join(f"{value:.2f} {when}" for value, when in ((before, "before"),
                                                                                     (after, "after")) if value is not None)
    loaded = is_loaded(before, after, threads)
    if loaded is None:
        return text + " (threads not recorded: whether it exceeded them is unknown)"
    return text + (f", above its {threads} thread(s): **measured under load**" if loaded else f", within its {threads} thread(s)")
