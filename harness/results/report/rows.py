"""The report's two tables as rows (raw numbers, for CSV) and as grids (formatted text, for
Markdown, LaTeX and HTML): the ablation (variant x suite) and the optimization ladder.

The ladder's speed-up and the paper's speed-up share one base: the level DreamZero's baseline
maps to in papers.yaml (O1-kvcache: its baseline already reuses the K/V cache). A variant with
no timed cell at that level has no speed-up column rather than one over another base.
"""
from __future__ import annotations

from collections import defaultdict

from harness.results.papers import paper_baseline_level, paper_ladder, paper_success_pct
from harness.results.report.collect import Collected, suite_order, variant_order
from harness.results.store import REFERENCE_LEVEL

PAPER_LADDER_LAYOUT = "dreamzero"  # the published ladder is DreamZero's: shown beside this layout's rows


def _num(x, digits=3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _round(x, digits=4):
    return None if x is None else round(float(x), digits)


def _ci(x, lo, hi, fmt) -> str:
    return "—" if x is None else f"{fmt(x)} [{fmt(lo)}, {fmt(hi)}]"


def headline_groups(col: Collected):
    """(variant, suite, level, group) for every variant at its headline level, in report order."""
    for v in col.variants:
        level = col.headline_level(v)
        for s in col.suites:
            g = col.groups.get((v, s, level)) if level else None
            if g is not None:
                yield v, s, level, g


def ablation_rows(col: Collected) -> list[dict]:
    """Long format: one row per (variant, suite) at the variant's headline level."""
    rows, source = [], col.latency_source
    for v, s, level, g in headline_groups(col):
        m = g.metrics
        lo, hi = m["success_ci95"] or (None, None)
        plo, phi = m["progress_ci95"] or (None, None)
        rows.append({
            "variant": v, "suite": s, "level": level, "seeds": " ".join(map(str, g.seeds)),
            "status": g.status, "n_episodes": m["n_episodes"], "n_errors": m["n_errors"],
            "n_valid": m["n_valid"], "n_success": m["n_success"],
            "success_pct": _round(None if m["success_rate"] is None else 100 * m["success_rate"]),
            "success_lo_pct": _round(None if lo is None else 100 * lo),
            "success_hi_pct": _round(None if hi is None else 100 * hi),
            "progress_mean": _round(m["progress_mean"]), "progress_lo": _round(plo),
            "progress_hi": _round(phi), "latency_p50_ms": _round(g.latency(source)["p50"], 2),
            "latency_source": source, "paper_success_pct": paper_success_pct(v, s),
        })
    return rows


def ladder_rows(col: Collected) -> list[dict]:
    """One row per (variant, suite, level); speed-up of p50 over the variant's cell at the paper's base level."""
    ref, base_level = paper_ladder(), paper_baseline_level()
    rows, source = [], col.latency_source
    by_vs = defaultdict(list)
    for (v, s, lvl), g in col.groups.items():
        if lvl != REFERENCE_LEVEL:
            by_vs[(v, s)].append(g)
    for (v, s) in sorted(by_vs, key=lambda k: (variant_order(k[0]), suite_order(k[1]))):
        gs = sorted(by_vs[(v, s)], key=lambda g: col.level_order(g.level))
        base = next((g for g in gs if g.level == base_level and not g.na_reason
                     and g.metrics["latency_ms"]["p50"]), None)
        for g in gs:
            m = g.metrics
            lat = g.latency(source) if not g.na_reason and m["latency_ms"]["p50"] else {"p50": None, "p95": None}
            p50, p95 = lat["p50"], lat["p95"]
            speed = base.latency(source)["p50"] / p50 if base and base.latency(source)["p50"] and p50 else None
            paper = ref.get(g.level, {}) if g.layout == PAPER_LADDER_LAYOUT else {}
            rows.append({
                "variant": v, "suite": s, "level": g.level, "status": g.status, "n_episodes": m["n_episodes"],
                "latency_p50_ms": _round(p50, 2), "latency_p95_ms": _round(p95, 2), "latency_source": source,
                "speedup": _round(speed, 3), "speedup_base": base.level if base else None,
                "effective_steps": _round(m["effective_steps_mean"], 2),
                "progress_mean": _round(m["progress_mean"]),
                "progress_lo": _round((m["progress_ci95"] or [None])[0]),
                "progress_hi": _round((m["progress_ci95"] or [None, None])[1]),
                "success_pct": _round(None if m["success_rate"] is None else 100 * m["success_rate"]),
                "paper_speedup_h100": paper.get("h100"), "paper_speedup_gb200": paper.get("gb200"),
                "na_reason": g.na_reason,
            })
    return rows


def ablation_grid(col: Collected, rows: list[dict]) -> tuple[list[str], list[list[str]], list[tuple[str, int]]]:
    """The wide table (variant x suite): header, body, and suite column groups (for LaTeX)."""
    by = {(r["variant"], r["suite"]): r for r in rows}
    paper_suites = {s for s in col.suites if any(paper_success_pct(v, s) is not None for v in col.variants)}
    header, groups = ["variant", "level"], []
    for s in col.suites:
        cols = ["success % [95% CI]", "progress [95% CI]", "n", "latency p50 ms"] + (["paper %"] if s in paper_suites else [])
        header += [f"{s} {c}" for c in cols]
        groups.append((s, len(cols)))
    body = []
    for v in col.variants:
        line = [v, col.headline_level(v) or "—"]
        for s in col.suites:
            r = by.get((v, s))
            if r is None:
                line += ["—", "—", "0", "—"]
            elif r["success_pct"] is None:
                line += [r["status"], "—", str(r["n_valid"]), "—"]
            else:
                line += [_ci(r["success_pct"], r["success_lo_pct"], r["success_hi_pct"], lambda x: f"{x:.1f}"),
                         _ci(r["progress_mean"], r["progress_lo"], r["progress_hi"], lambda x: f"{x:.2f}"),
                         str(r["n_valid"]) + (f" (+{r['n_errors']} err)" if r["n_errors"] else ""),
                         _num(r["latency_p50_ms"], 1) or "—"]
            if s in paper_suites:
                p = paper_success_pct(v, s)
                line.append("—" if p is None else f"{p:.1f}")
        body.append(line)
    return header, body, groups


def per_task_rows(col: Collected) -> list[dict]:
    """One row per (variant, suite, task) at the variant's headline level: the heatmap's numbers."""
    rows = []
    for v, s, level, g in headline_groups(col):
        for task, t in g.per_task.items():
            rows.append({"variant": v, "suite": s, "level": level, "task": task, "n": t["n"],
                         "success_pct": _round(100 * t["success_rate"]), "progress_mean": _round(t["progress_mean"])})
    return rows


PER_TASK_COLS = ["variant", "suite", "level", "task", "n", "success %", "progress"]


def per_task_grid(rows: list[dict]) -> list[list[str]]:
    return [[r["variant"], r["suite"], r["level"], r["task"], str(r["n"]), _num(r["success_pct"], 1),
             _num(r["progress_mean"], 3) or "—"] for r in rows]


PER_TASK_CAPTION = ("Success % and task progress (final, mean) per task at each variant's headline level, "
                    "valid episodes pooled over seeds.")


LADDER_COLS = ["variant", "suite", "level", "n", "latency p50 ms", "latency p95 ms", "speed-up",
               "effective steps", "progress [95% CI]", "success %", "paper speed-up H100 / GB200"]


def ladder_grid(rows: list[dict]) -> list[list[str]]:
    body = []
    for r in rows:
        paper = "—"
        if r["paper_speedup_h100"] is not None or r["paper_speedup_gb200"] is not None:
            paper = " / ".join("–" if x is None else f"{x:g}×" for x in (r["paper_speedup_h100"],
                                                                         r["paper_speedup_gb200"]))
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        body.append([r["variant"], r["suite"], r["level"] + (" (n/a)" if r["na_reason"] else ""),
                     str(r["n_episodes"]), _num(r["latency_p50_ms"], 1) or "—", _num(r["latency_p95_ms"], 1) or "—",
                     speed, _num(r["effective_steps"], 2) or "—",
                     _ci(r["progress_mean"], r["progress_lo"], r["progress_hi"], lambda x: f"{x:.2f}"),
                     _num(r["success_pct"], 1) or "—", paper])
    return body


ABLATION_CAPTION = ("Ablation (variant x suite) at each variant's headline level (its lowest optimization level "
                    "present); success % with Wilson 95% interval, task progress (final, mean) with bootstrap 95% "
                    "interval, n valid episodes pooled over seeds; paper: published success %.")

LATENCY_NOTE = {
    "alone": "Latency: each policy timed alone after the episodes (20 episode-like calls on one thread, "
             "the first dropped), the median over seeds.",
    "in run": "Latency: timed during the run, while other cells shared the cores (some cells were not timed "
              "alone): ratios between variants are not like for like.",
}


def ladder_caption() -> str:
    base = paper_baseline_level()
    return ("Inference-optimization ladder: latency per call (each cell's first call excluded as warm-up), "
            f"speed-up of p50 over the same variant's {base} cell (— where it has none), effective denoising "
            f"steps, task progress (final, mean). Paper: DreamZero's cumulative speed-up over its baseline, on the "
            f"same base ({base}: its baseline already reuses the K/V cache), beside {PAPER_LADDER_LAYOUT}-layout "
            "rows only; its CFG-parallelism step (2 GPUs) has no level here, and its later steps include it as "
            "ours include O2's batched CFG.")


TRAINING_COLS = ["variant", "suite", "seed", "steps", "final loss", "samples/s", "wall s"]
TRAINING_CAPTION = "Training cells: steps run (the variant's recipe unless --steps set them), last loss, throughput."


def training_grid(col: Collected) -> list[list[str]]:
    """One row per train cell, from its train.json (absent while it runs)."""
    import json
    body = []
    for c, _ in sorted(col.train, key=lambda t: (variant_order(t[0].key.variant), t[0].key.suite, t[0].key.seed)):
        f = c.path / "train.json"
        info = json.loads(f.read_text()) if f.exists() else {}
        body.append([c.key.variant, c.key.suite, str(c.key.seed), str(info.get("step", "—")),
                     _num(info.get("final_loss"), 3) or "—", _num(info.get("samples_per_s"), 1) or "—",
                     _num(info.get("wall_s"), 0) or "—"])
    return body
