"""The results of bench/ivfpq.py and what they say: the rows it measures (and reads back from its
JSONs), the summaries at the recall targets, QPS at equal recall, the rows measured under load, the
Markdown tables of docs/PERFORMANCE.md and the recall-QPS plots.

Three families, each retro against its faiss counterpart with equal code bytes per vector: "pq8"
(8-bit PQ, IndexIVFPQ), "opq" (the same behind an OPQ rotation) and "fastscan" (4-bit fast-scan PQ
with twice the sub-quantizers, exact re-ranking of k * k_factor candidates). Engine names: "retro",
"faiss", "retro-opq", "faiss-opq", "retro-fs", "faiss-fs"; their re-ranked rows add
"+rerank<k_factor>" (retro) or "+refine<k_factor>" (faiss IndexRefineFlat).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import equal_recall
import provenance

K = 10
RECALL_TARGETS = (0.90, 0.95)  # where the fast-scan family's best settings are compared
# A batch whose CPU share per thread falls below this had to share its cores with other work:
# quiet runs measured 0.79-1.03 per thread (ivfpq_cpu.json, ivfpq_cpu_quick*.json), the fast-scan
# run at a load of 4-5 on 2 cores 0.29-0.55 (ivfpq_cpu_fastscan.json, synthetic, 2 threads).
UNDER_LOAD_CPU_SHARE = 0.75


@dataclass(frozen=True)
class PairFamily:
    """Two engines compared at equal nprobe: the 8-bit family, with or without OPQ."""

    name: str  # --families entry and the summaries' "family"
    ours: str  # engine names
    theirs: str
    opq: bool


PQ8 = PairFamily("pq8", "retro", "faiss", opq=False)
OPQ = PairFamily("opq", "retro-opq", "faiss-opq", opq=True)
PAIR_FAMILIES = {family.name: family for family in (PQ8, OPQ)}
FAST_SCAN_ENGINES = ("retro-fs", "faiss-fs")  # engine names (and prefixes) of the fast-scan family
FAMILY_OF_ENGINE = {PQ8.ours: PQ8.name, PQ8.theirs: PQ8.name, OPQ.ours: OPQ.name, OPQ.theirs: OPQ.name,
                    **{engine: "fastscan" for engine in FAST_SCAN_ENGINES}}


def family_of(engine: str) -> str:
    """The family of an engine name, re-ranked or not ("retro-fs+rerank8" -> "fastscan")."""
    return FAMILY_OF_ENGINE[engine.split("+")[0]]


# --- the rows ----------------------------------------------------------------------------------------


@dataclass
class SearchRow:
    dataset: str
    engine: str
    threads: int
    nprobe: int
    recall: float
    batch_qps: float
    batch_cpu_share: float  # CPU seconds / wall seconds of the median batch (2.0 = two busy cores)
    single_qps: float | None = None
    load: float | None = None  # 1-minute load average as the measurement began (older JSONs: None)


@dataclass
class BuildRow:
    dataset: str
    engine: str
    threads: int
    train_seconds: float
    add_seconds: float
    coarse_objective: float
    train_size: int
    niter: int


@dataclass
class DatasetResult:
    name: str
    n: int
    nq: int
    d: int
    nlist: int
    pq_m: int
    build: list[BuildRow] = field(default_factory=list)
    search: list[SearchRow] = field(default_factory=list)

    @classmethod
    def from_json(cls, result: dict) -> DatasetResult:
        scalars = {f.name: result[f.name] for f in fields(cls) if f.name not in ("build", "search")}
        return cls(**scalars, build=[BuildRow(**b) for b in result["build"]],
                   search=[SearchRow(**s) for s in result["search"]])

    def of_family(self, family: str) -> DatasetResult:
        """The same dataset with only the rows of one family's engines."""
        return DatasetResult(self.name, self.n, self.nq, self.d, self.nlist, self.pq_m,
                             [b for b in self.build if family_of(b.engine) == family],
                             [s for s in self.search if family_of(s.engine) == family])

    def under_load(self, row: SearchRow) -> bool:
        """Whether other work held the cores while row was measured: the load as it began above the
        most threads of the run (the benchmark alone, its earlier settings' load included, accounts
        for at most those), or its batch's CPU share below UNDER_LOAD_CPU_SHARE per thread."""
        run_threads = max(r.threads for r in self.search)
        return ((row.load is not None and row.load > run_threads)
                or row.batch_cpu_share < UNDER_LOAD_CPU_SHARE * row.threads)


def single_qps_cells(ours: SearchRow, theirs: SearchRow) -> str:
    """The table cells "ours | theirs | ratio" of single-query QPS ("- | - | -" if unmeasured)."""
    if not (ours.single_qps and theirs.single_qps):
        return "- | - | -"
    return f"{ours.single_qps:,.0f} | {theirs.single_qps:,.0f} | {ours.single_qps / theirs.single_qps:.2f}"


def load_cell(data: DatasetResult, rows: list[SearchRow]) -> str:
    """The table cell of rows measured side by side: empty, or why they count as under load."""
    if not any(data.under_load(r) for r in rows):
        return ""
    loads = [r.load for r in rows if r.load is not None]
    shares = " / ".join(f"{r.batch_cpu_share:.2f}" for r in rows)
    return (f"**under load**: CPU {shares} of {rows[0].threads}" + (f", load {max(loads):.2f}" if loads else ""))


def loaded_share(data: DatasetResult, rows: list[SearchRow]) -> str:
    """" (n of m rows measured under load)", or nothing when none was."""
    loaded = sum(data.under_load(r) for r in rows)
    return f" ({loaded} of {len(rows)} rows measured under load)" if loaded else ""


# --- summaries ---------------------------------------------------------------------------------------


def qps_at_recall(rows: list[SearchRow], recall: float, attribute: str) -> float | None:
    """QPS at the given recall, log-linearly interpolated along the engine's nprobe curve (unlike
    equal_recall.qps_at_recall, not its upper envelope: the summaries of the issue's targets)."""
    points = sorted((r.recall, getattr(r, attribute)) for r in rows if getattr(r, attribute))
    for (r0, q0), (r1, q1) in zip(points, points[1:]):
        if r0 <= recall <= r1:
            if r1 == r0:
                return max(q0, q1)
            return equal_recall.log_interpolate((r0, q0), (r1, q1), recall)
    if points and points[0][0] >= recall:  # already there at the smallest nprobe
        return points[0][1]
    return None


def summarize_fast_scan(result: DatasetResult, threads: int) -> dict:
    """At each recall target, the best batch QPS of each fast-scan engine over all its (nprobe,
    k_factor) rows that reach it, that row's single-query QPS, and the ratios retro / faiss."""
    rows = [r for r in result.search if r.threads == threads]
    summary: dict = {"family": "fastscan", "threads": threads}
    for target in RECALL_TARGETS:
        best = {}
        for prefix in ("retro-fs+", "faiss-fs+"):
            reaching = [r for r in rows if r.engine.startswith(prefix) and r.recall >= target]
            best[prefix[:-1]] = max(reaching, key=lambda r: r.batch_qps, default=None)
        ours, theirs = best["retro-fs"], best["faiss-fs"]
        entry = {name: asdict(row) if row else None for name, row in best.items()}
        if ours and theirs:
            entry["batch_ratio"] = ours.batch_qps / theirs.batch_qps
            if ours.single_qps and theirs.single_qps:
                entry["single_ratio"] = ours.single_qps / theirs.single_qps
        summary[f"recall_{target:.2f}"] = entry
    return summary


def summarize(result: DatasetResult, threads: int, family: PairFamily = PQ8) -> dict:
    """At the recall faiss reaches at the nprobe where it gets 95% of its best recall: retro's QPS
    (interpolated along its nprobe curve) over faiss's, batch and single; the largest recall gap at
    equal nprobe; train and add time ratios."""
    rows = [r for r in result.search if r.threads == threads]
    ours = sorted((r for r in rows if r.engine == family.ours), key=lambda r: r.nprobe)
    theirs = sorted((r for r in rows if r.engine == family.theirs), key=lambda r: r.nprobe)
    if not ours or not theirs:
        return {}
    best = max(r.recall for r in theirs)
    anchor = next(r for r in theirs if r.recall >= 0.95 * best)
    summary = {
        "family": family.name,
        "threads": threads,
        "faiss_best_recall": best,
        "anchor_nprobe": anchor.nprobe,
        "anchor_recall": anchor.recall,
        "max_recall_gap": max(abs(a.recall - b.recall) for a, b in zip(ours, theirs)),
    }
    for attribute in ("batch_qps", "single_qps"):
        theirs_qps = getattr(anchor, attribute)
        ours_qps = qps_at_recall(ours, anchor.recall, attribute)
        summary[f"{attribute}_faiss"] = theirs_qps
        summary[f"{attribute}_retro"] = ours_qps
        summary[f"{attribute}_ratio"] = ours_qps / theirs_qps if ours_qps and theirs_qps else None
    builds = {b.engine: b for b in result.build}
    if family.ours in builds and family.theirs in builds:
        summary["train_ratio"] = builds[family.ours].train_seconds / builds[family.theirs].train_seconds
        summary["add_ratio"] = builds[family.ours].add_seconds / builds[family.theirs].add_seconds
    return summary


@dataclass(frozen=True)
class Curve:
    """The rows that make one engine's recall-QPS curve in a family: its plain rows along nprobe,
    or its re-ranked rows over every (nprobe, k_factor)."""

    family: str
    ours: str  # engine names
    theirs: str
    reranked: bool

    def rows(self, rows: list[SearchRow], engine: str) -> list[SearchRow]:
        return [r for r in rows if (r.engine.startswith(engine + "+") if self.reranked else r.engine == engine)]

    def label(self, result: DatasetResult) -> str:
        codes = {"pq8": f"PQ{result.pq_m}", "opq": f"OPQ{result.pq_m},PQ{result.pq_m}",
                 "fastscan": f"PQ{2 * result.pq_m}x4fs"}[self.family]
        return codes + (" + re-ranking" if self.reranked else "")


CURVES = (Curve(PQ8.name, PQ8.ours, PQ8.theirs, False), Curve(PQ8.name, PQ8.ours, PQ8.theirs, True),
          Curve(OPQ.name, OPQ.ours, OPQ.theirs, False), Curve(OPQ.name, OPQ.ours, OPQ.theirs, True),
          Curve("fastscan", *FAST_SCAN_ENGINES, True))


def summarize_equal_recall(result: DatasetResult, family: str) -> list[dict]:
    """Per curve of the family and thread count: both engines' batch and single-query QPS at
    equal_recall.RECALL_TARGETS, interpolated on their curves' upper envelopes, and the ratios."""
    summaries = []
    for curve in (c for c in CURVES if c.family == family):
        for threads in sorted({r.threads for r in result.search}, reverse=True):
            rows = [r for r in result.search if r.threads == threads]
            ours, theirs = curve.rows(rows, curve.ours), curve.rows(rows, curve.theirs)
            if not ours or not theirs:
                continue
            summary: dict = {"family": family, "curve": curve.label(result), "threads": threads,
                             "best_recall": {"ours": max(r.recall for r in ours), "theirs": max(r.recall for r in theirs)},
                             "rows": len(ours) + len(theirs),
                             "rows_under_load": sum(result.under_load(r) for r in ours + theirs)}
            for attribute in ("batch_qps", "single_qps"):
                ours_points, theirs_points = (
                    [(r.recall, getattr(r, attribute)) for r in side if getattr(r, attribute)] for side in (ours, theirs))
                summary[attribute] = (equal_recall.ratios_at_recall(ours_points, theirs_points)
                                      if ours_points and theirs_points else None)
            summaries.append(summary)
    return summaries


# --- tables ------------------------------------------------------------------------------------------


def datasets_of(result: dict, family: str) -> list[DatasetResult]:
    """The datasets of an ivfpq JSON with the rows of one family (those without any left out)."""
    parsed = (DatasetResult.from_json(r).of_family(family) for r in result["results"])
    return [d for d in parsed if d.search]


def header(result: dict, datasets: list[DatasetResult]) -> list[str]:
    """The provenance line and how the rows were measured and marked."""
    threads = max((r.threads for d in datasets for r in d.search), default=None)
    return [provenance.describe(result, threads),
            f"Medians of interleaved repeats; recall@{K} against faiss IndexFlatL2. Ratio = retro / faiss. "
            "A row is marked **under load** where the load average as it began exceeded the run's threads or a "
            f"batch's CPU share was below {UNDER_LOAD_CPU_SHARE} per thread: other work held the cores (runs "
            "before the load was recorded per row counted CPU time in 10 ms ticks: coarse for batches "
            "under ~0.1 s)."]


def equal_recall_table(result: DatasetResult, family: str) -> list[str]:
    """The table of summarize_equal_recall, or nothing when the family has no pair of curves."""
    summaries = summarize_equal_recall(result, family)
    if not summaries:
        return []
    lines = ["", f"At equal recall@{K} (`bench/equal_recall.py`: each engine's QPS interpolated on the upper "
             "envelope of its recall-QPS points, linear in recall and log in QPS; a target below a curve's "
             "lowest recall gets its fastest setting's QPS; not reached: the curve stops below it):", "",
             f"| threads | codes | recall@{K} | batch QPS retro | batch QPS faiss | ratio | single QPS retro "
             "| single QPS faiss | ratio | rows under load |", "|---|---|---|---|---|---|---|---|---|---|"]

    def cells(entry: dict | None) -> str:
        if entry is None:
            return "- | - | -"
        qps = " | ".join("not reached" if entry[side] is None else f"{entry[side]:,.0f}" for side in ("ours", "theirs"))
        return qps + (" | -" if entry["ratio"] is None else f" | **{entry['ratio']:.2f}x**")

    targets = equal_recall.RECALL_TARGETS
    for s in summaries:
        loaded = f"{s['rows_under_load']} of {s['rows']}"
        if s["best_recall"]["ours"] < targets[0] and s["best_recall"]["theirs"] < targets[0]:
            best = [f"not reached (best {s['best_recall'][side]:.3f})" for side in ("ours", "theirs")]
            lines.append(f"| {s['threads']} | {s['curve']} | {targets[0]:.2f}-{targets[-1]:.2f} | {best[0]} | "
                         f"{best[1]} | - | {best[0]} | {best[1]} | - | {loaded} |")
            continue
        for i, target in enumerate(targets):
            single = s["single_qps"][i] if s["single_qps"] else None
            lines.append(f"| {s['threads']} | {s['curve']} | {target:.2f} | {cells(s['batch_qps'][i])} | "
                         f"{cells(single)} | {loaded} |")
    return lines


def markdown(result: dict, family_name: str = PQ8.name) -> str:
    """The table of an 8-bit family ("pq8", "opq") in an ivfpq JSON."""
    family = PAIR_FAMILIES[family_name]
    datasets = datasets_of(result, family.name)
    lines = [*header(result, datasets), ""]
    for data in datasets:
        opq = f"OPQ{data.pq_m}," if family.opq else ""
        lines += [f"### {data.name}: {data.n:,} x {data.d}, {data.nq:,} queries, {opq}IVF{data.nlist},PQ{data.pq_m}", ""]
        lines += ["| engine | threads | train s | add s | k-means objective |", "|---|---|---|---|---|"]
        for b in data.build:
            if b.engine in (family.ours, family.theirs):
                lines.append(f"| {b.engine} | {b.threads} | {b.train_seconds:.2f} | {b.add_seconds:.2f} | {b.coarse_objective:.6g} |")
        lines += equal_recall_table(data, family.name)
        lines += ["", "| threads | nprobe | recall retro | recall faiss | batch QPS retro | batch QPS faiss | ratio | "
                  "single QPS retro | single QPS faiss | ratio | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        by_key = {(r.engine, r.threads, r.nprobe): r for r in data.search}
        for (engine, threads, nprobe), ours in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            theirs = by_key.get((family.theirs, threads, nprobe))
            if engine != family.ours or theirs is None:
                continue
            single = single_qps_cells(ours, theirs)
            lines.append(f"| {threads} | {nprobe} | {ours.recall:.3f} | {theirs.recall:.3f} | {ours.batch_qps:,.0f} | "
                         f"{theirs.batch_qps:,.0f} | {ours.batch_qps / theirs.batch_qps:.2f} | {single} | "
                         f"{load_cell(data, [ours, theirs])} |")
        rerank = [r for r in data.search if "+" in r.engine]
        if rerank:
            lines += ["", "With exact re-ranking (batch):", "", "| engine | threads | nprobe | recall | batch QPS | load |",
                      "|---|---|---|---|---|---|"]
            for r in sorted(rerank, key=lambda r: (r.engine, r.threads, r.nprobe)):
                lines.append(f"| {r.engine} | {r.threads} | {r.nprobe} | {r.recall:.3f} | {r.batch_qps:,.0f} | {load_cell(data, [r])} |")
        for threads in sorted({r.threads for r in data.search}, reverse=True):
            s = summarize(data, threads, family)
            if not s:
                continue
            fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            pair = [r for r in data.search if r.threads == threads and r.engine in (family.ours, family.theirs)]
            lines += ["", f"Summary, {threads} thread(s): faiss reaches 95% of its best recall@{K} "
                      f"({s['faiss_best_recall']:.3f}) at nprobe {s['anchor_nprobe']} (recall {s['anchor_recall']:.3f}); "
                      f"at that recall retro/faiss QPS = **{fmt(s['batch_qps_ratio'])}x** batch, "
                      f"**{fmt(s['single_qps_ratio'])}x** single; largest recall gap at equal nprobe "
                      f"{s['max_recall_gap']:.3f}"
                      + (f"; train {fmt(s['train_ratio'])}x, add {fmt(s['add_ratio'])}x faiss's time" if "train_ratio" in s else "")
                      + f"{loaded_share(data, pair)}."]
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def markdown_fast_scan(result: dict, residual: bool = False) -> str:
    """The fast-scan family: build times, the best QPS of each engine at the recall targets, QPS at
    equal recall, and every (threads, k_factor, nprobe) row side by side."""
    datasets = datasets_of(result, "fastscan")
    coded = "residuals (by_residual=True)" if residual else "vectors themselves (by_residual=False)"
    lines = [*header(result, datasets)]
    lines[-1] += (f" Both engines code the {coded} and re-rank k * k_factor candidates exactly against the "
                  "float32 base vectors (faiss: IndexRefineFlat).")
    lines.append("")
    fmt = lambda v: "-" if not v else f"{v:,.0f}"  # noqa: E731
    for data in datasets:
        fs_m = 2 * data.pq_m
        lines += [f"### {data.name}: {data.n:,} x {data.d}, IVF{data.nlist},PQ{fs_m}x4fs "
                  f"({fs_m // 2} code bytes per vector; re-ranking vectors {4 * data.d} bytes per vector, apart)", ""]
        lines += ["| engine | threads | train s | add s |", "|---|---|---|---|"]
        for b in data.build:
            lines.append(f"| {b.engine} | {b.threads} | {b.train_seconds:.2f} | {b.add_seconds:.2f} |")
        for threads in sorted({r.threads for r in data.search}, reverse=True):
            s = summarize_fast_scan(data, threads)
            for target in RECALL_TARGETS:
                entry = s[f"recall_{target:.2f}"]
                chosen = [SearchRow(**entry[name]) for name in FAST_SCAN_ENGINES if entry[name]]
                describe = lambda row: (  # noqa: E731
                    "not reached" if row is None else
                    f"{row['batch_qps']:,.0f} QPS batch, {fmt(row['single_qps'])} single "
                    f"({row['engine'].split('+')[1]}, nprobe {row['nprobe']}, recall {row['recall']:.3f})")
                ratio = (f"**{entry['batch_ratio']:.2f}x** batch, **{entry.get('single_ratio', 0):.2f}x** single"
                         if "batch_ratio" in entry else "n/a")
                loaded = "; measured under load" if any(data.under_load(r) for r in chosen) else ""
                lines += ["", f"At recall@{K} >= {target:.2f}, {threads} thread(s): retro {describe(entry['retro-fs'])}; "
                          f"faiss {describe(entry['faiss-fs'])}; retro / faiss = {ratio}{loaded}."]
        lines += equal_recall_table(data, "fastscan")
        lines += ["", "| threads | k_factor | nprobe | recall retro | recall faiss | batch QPS retro | batch QPS faiss | ratio | "
                  "single QPS retro | single QPS faiss | ratio | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        by_key = {(r.engine, r.threads, r.nprobe): r for r in data.search}
        k_factor_of = lambda engine: int(engine.split("rerank")[1])  # noqa: E731
        ours_rows = [(key, row) for key, row in by_key.items() if key[0].startswith("retro-fs+")]
        for (engine, threads, nprobe), ours in sorted(ours_rows, key=lambda kv: (kv[0][1], k_factor_of(kv[0][0]), kv[0][2])):
            k_factor = k_factor_of(engine)
            theirs = by_key.get((f"faiss-fs+refine{k_factor}", threads, nprobe))
            if theirs is None:
                continue
            single = single_qps_cells(ours, theirs)
            lines.append(f"| {threads} | {k_factor} | {nprobe} | {ours.recall:.3f} | {theirs.recall:.3f} | "
                         f"{ours.batch_qps:,.0f} | {theirs.batch_qps:,.0f} | {ours.batch_qps / theirs.batch_qps:.2f} | "
                         f"{single} | {load_cell(data, [ours, theirs])} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


# --- plots -------------------------------------------------------------------------------------------


def plot_paths(json_path: Path, result: dict) -> list[Path]:
    """The recall-QPS plot of each dataset of an ivfpq JSON: <stem>_<dataset>.png beside it."""
    return [json_path.with_name(f"{json_path.stem}_{r['name']}.png") for r in result["results"]]


def plot_dataset(data: DatasetResult, path: Path) -> None:
    """QPS against recall@10 per thread count, batch and single queries: per curve (family, plain or
    re-ranked) the upper envelope of retro's points (solid) beside faiss's (dashed), with the
    recall targets of the equal-recall table as dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads_list = sorted({r.threads for r in data.search}, reverse=True)
    fig, axes = plt.subplots(len(threads_list), 2, figsize=(11, 4.2 * len(threads_list)), squeeze=False)
    for row_axes, threads in zip(axes, threads_list):
        rows = [r for r in data.search if r.threads == threads]
        for ax, attribute, title in zip(row_axes, ("batch_qps", "single_qps"), ("batch", "single queries")):
            for color, curve in enumerate(CURVES):
                for engine, style, marker in ((curve.ours, "-", "o"), (curve.theirs, "--", "s")):
                    points = [(r.recall, getattr(r, attribute)) for r in curve.rows(rows, engine) if getattr(r, attribute)]
                    if points:
                        recalls, qps = zip(*equal_recall.envelope(points))
                        ax.plot(recalls, qps, style, marker=marker, color=f"C{color}",
                                label=f"{engine.split('-')[0]} {curve.label(data)}")
            for target in equal_recall.RECALL_TARGETS:
                ax.axvline(target, color="0.6", linestyle=":", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xlabel(f"recall@{K}")
            ax.set_ylabel("queries / s")
            ax.set_title(f"{data.name} (nlist {data.nlist}), {threads} thread(s): {title}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_result(json_path: Path, result: dict) -> list[Path]:
    """Writes plot_dataset of each dataset of an ivfpq JSON (plot_paths); returns the paths."""
    paths = plot_paths(json_path, result)
    for data, path in zip(result["results"], paths):
        plot_dataset(DatasetResult.from_json(data), path)
    return paths
