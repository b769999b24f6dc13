"""`wam-bench report`: tables, plots and one HTML page per experiment, from the results store.

Writes `reports/<experiment>/`: ablation.{md,tex,csv} (variant x suite), ladder.{md,tex,csv}
(variant x level), robustness.{md,csv} (clean vs perturbed suites), cells.csv, plots as PNG and
SVG, and a self-contained index.html.

Numbers are recomputed from the episode records (the store's source of truth), pooled over
seeds per (variant, suite, level). The ablation table shows each variant at its *headline
level*: the lowest optimization level present for it (O0-eager if it was run, else O1-kvcache,
...), the most faithful computation. The output depends only on the store: no clock, seeded
bootstrap, fixed plot metadata.
"""
from __future__ import annotations

import base64
import csv
import html
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.results.papers import paper_ladder, paper_success_pct, papers
from harness.results.stats import per_task, summarize
from harness.results.store import REFERENCE_LEVEL, Cell, CellKey, Store, na_reason

LEVELS = ["O0-eager", "O1-kvcache", "O2-cfg-batch", "O3-dit-cache", "O4-compile", "O5-lowp", "O6-flash"]
VARIANTS = ["fastwam", "fastwam-joint", "fastwam-idm", "fastwam-no-cotrain", "dreamzero", "dreamzero-flash"]
REFERENCE_ORDER = ["expert", "random"]
SUITES = ["tabletop", "libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90",
          "robotwin2_clean", "robotwin2_randomized"]
MIN_EPISODES = 20  # below this a Wilson interval is wider than +-20 points: too few to compare


def _order(known: list[str], name: str, tail: list[str] = ()) -> tuple:
    if name in tail:
        return (2, tail.index(name), name)
    return (0, known.index(name), name) if name in known else (1, 0, name)


def level_order(level: str) -> tuple:
    return _order(LEVELS, level, [REFERENCE_LEVEL])


def variant_order(v: str) -> tuple:
    return _order(VARIANTS, v, REFERENCE_ORDER)


def suite_order(s: str) -> tuple:
    return _order(SUITES, s)


# ------------------------------------------------------------------------------ collecting

@dataclass
class Group:
    """One (variant, suite, level), pooled over its seeds."""
    variant: str
    suite: str
    level: str
    cells: list[Cell] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    episodes: list[dict] = field(default_factory=list)
    na_reason: str | None = None
    metrics: dict = field(default_factory=dict)
    per_task: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [c.key.seed for c in self.cells]

    @property
    def status(self) -> str:
        if self.na_reason:
            return "n/a"
        for s in ("failed", "empty", "partial"):
            if s in self.statuses:
                return s
        return "complete"


@dataclass
class Collected:
    experiment: str
    groups: dict[tuple[str, str, str], Group]
    train: list[tuple[Cell, list[dict]]]
    cells: list[Cell]
    results: list[dict]
    notes: list[str]
    missing: list[str]
    min_episodes: int

    @property
    def suites(self) -> list[str]:
        return sorted({k[1] for k in self.groups}, key=suite_order)

    @property
    def variants(self) -> list[str]:
        return sorted({k[0] for k in self.groups}, key=variant_order)

    def headline_level(self, variant: str) -> str | None:
        levels = [k[2] for k, g in self.groups.items() if k[0] == variant and not g.na_reason]
        return min(levels, key=level_order) if levels else None


def collect(store: Store, experiment: str, expected: list[CellKey] | None = None,
            min_episodes: int = MIN_EPISODES) -> Collected:
    cells = store.cells(experiment)
    groups: dict[tuple[str, str, str], Group] = {}
    train, results, notes = [], [], []
    for c in cells:
        k = c.key
        if k.is_train:
            train.append((c, c.losses()))
            continue
        g = groups.setdefault((k.variant, k.suite, k.opt_level), Group(k.variant, k.suite, k.opt_level))
        res = c.result()
        if res:
            results.append(res)
        g.cells.append(c)
        g.statuses.append(c.status())
        g.na_reason = g.na_reason or na_reason(res)
        g.episodes.extend(c.episodes())
    for g in groups.values():
        g.metrics = summarize(g.episodes)
        g.per_task = per_task(g.episodes)
    found = {c.key for c in cells}
    missing = sorted(f"{k.variant} / {k.suite} / seed{k.seed} / {k.opt_level}" for k in (expected or [])
                     if k not in found)
    for (v, s, lvl), g in sorted(groups.items(), key=lambda kv: _gkey(kv[0])):
        where = f"{v} / {s} / {lvl}"
        if g.na_reason:
            notes.append(f"{where}: not applicable ({g.na_reason})")
            continue
        bad = [f"seed{c.key.seed} {st}" for c, st in zip(g.cells, g.statuses) if st != "complete"]
        if bad:
            notes.append(f"{where}: not complete ({', '.join(bad)})")
        m = g.metrics
        if m["n_errors"]:
            notes.append(f"{where}: {m['n_errors']} of {m['n_episodes']} episodes raised errors "
                         "(left out of success and progress)")
        if m["n_valid"] < min_episodes and not (bad and m["n_valid"] == 0):
            notes.append(f"{where}: only {m['n_valid']} valid episodes (< {min_episodes}): too few to compare")
    # grid holes: a variant run on some suites but not on another at its headline level
    col = Collected(experiment, groups, train, cells, results, notes, missing, min_episodes)
    model_suites = sorted({k[1] for k in groups if k[0] not in REFERENCE_ORDER}, key=suite_order)
    for v in col.variants if expected is None else []:  # the run's own grid, when given, is exact
        h = col.headline_level(v)
        if v in REFERENCE_ORDER or h is None:
            continue
        missing += [f"{v} / {s} / {h} (headline level): no cell, while other variants ran {s}"
                    for s in model_suites if (v, s, h) not in groups]
    evaluated = {(k[0], k[1]) for k in groups}
    missing += [f"{c.key.variant} / {c.key.suite} / seed{c.key.seed}: trained, never evaluated"
                for c, _ in train if (c.key.variant, c.key.suite) not in evaluated]
    for c, losses in train:
        if not losses:
            notes.append(f"train {c.key.variant} / {c.key.suite} / seed{c.key.seed}: no loss.jsonl records")
    return col


def _gkey(k: tuple[str, str, str]) -> tuple:
    return (variant_order(k[0]), suite_order(k[1]), level_order(k[2]))


# ------------------------------------------------------------------------------ tables

def _pct(x, digits=1) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}"


def _num(x, digits=3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _round(x, digits=4):
    return None if x is None else round(float(x), digits)


def ablation_rows(col: Collected) -> list[dict]:
    """Long format: one row per (variant, suite) at the variant's headline level."""
    rows = []
    for v in col.variants:
        level = col.headline_level(v)
        for s in col.suites:
            g = col.groups.get((v, s, level)) if level else None
            if g is None:
                continue
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
                "progress_hi": _round(phi), "latency_p50_ms": _round(m["latency_ms"]["p50"], 2),
                "paper_success_pct": paper_success_pct(v, s),
            })
    return rows


def ladder_rows(col: Collected) -> list[dict]:
    """One row per (variant, suite, level), speed-up of latency p50 over the variant's lowest level."""
    ref = paper_ladder()
    rows = []
    by_vs = defaultdict(list)
    for (v, s, lvl), g in col.groups.items():
        if lvl != REFERENCE_LEVEL:
            by_vs[(v, s)].append(g)
    for (v, s) in sorted(by_vs, key=lambda k: (variant_order(k[0]), suite_order(k[1]))):
        gs = sorted(by_vs[(v, s)], key=lambda g: level_order(g.level))
        timed = [g for g in gs if g.metrics["latency_ms"]["p50"] and not g.na_reason]
        base = timed[0] if timed else None
        for g in gs:
            m = g.metrics
            p50, p95 = m["latency_ms"]["p50"], m["latency_ms"]["p95"]
            speed = base.metrics["latency_ms"]["p50"] / p50 if base and p50 and not g.na_reason else None
            paper = ref.get(g.level, {}) if v.startswith("dreamzero") else {}
            rows.append({
                "variant": v, "suite": s, "level": g.level, "status": g.status, "n_episodes": m["n_episodes"],
                "latency_p50_ms": _round(p50, 2), "latency_p95_ms": _round(p95, 2),
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


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in columns})


def _ci(x, lo, hi, fmt) -> str:
    return "—" if x is None else f"{fmt(x)} [{fmt(lo)}, {fmt(hi)}]"


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


LADDER_COLS = ["variant", "suite", "level", "n", "latency p50 ms", "latency p95 ms", "speed-up",
               "effective steps", "progress [95% CI]", "success %", "paper speed-up H100 / GB200"]


def ladder_grid(rows: list[dict]) -> list[list[str]]:
    body = []
    for r in rows:
        paper = "—"
        if r["paper_speedup_h100"] is not None or r["paper_speedup_gb200"] is not None:
            paper = " / ".join("–" if x is None else f"{x:g}×" for x in (r["paper_speedup_h100"],
                                                                         r["paper_speedup_gb200"]))
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}× vs {r['speedup_base']}"
        body.append([r["variant"], r["suite"], r["level"] + (" (n/a)" if r["na_reason"] else ""),
                     str(r["n_episodes"]), _num(r["latency_p50_ms"], 1) or "—", _num(r["latency_p95_ms"], 1) or "—",
                     speed, _num(r["effective_steps"], 2) or "—",
                     _ci(r["progress_mean"], r["progress_lo"], r["progress_hi"], lambda x: f"{x:.2f}"),
                     _num(r["success_pct"], 1) or "—", paper])
    return body


def markdown(header: list[str], body: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    out = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("×", r"$\times$"), ("—", "--"), ("–", "--")):
        out = out.replace(a, b)
    return out


def latex(header: list[str], body: list[list[str]], caption: str, label: str,
          groups: list[tuple[str, int]] | None = None, lead: int = 0) -> str:
    """A booktabs table; `groups` adds a spanning header row (e.g. one per suite) after `lead` columns."""
    n = len(header)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * max(lead, 1)
             + "r" * (n - max(lead, 1)) + "}", r"\toprule"]
    if groups:
        top, rules, start = [""] * lead, [], lead + 1
        for name, span in groups:
            top.append(rf"\multicolumn{{{span}}}{{c}}{{{_tex(name)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines += [" & ".join(top) + r" \\", " ".join(rules)]
        sub = header[:lead] + [h.split(" ", 1)[1] if " " in h else h for h in header[lead:]]
        lines.append(" & ".join(map(_tex, sub)) + r" \\")
    else:
        lines.append(" & ".join(map(_tex, header)) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(map(_tex, r)) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(caption)}}}", rf"\label{{{label}}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.hashsalt": "wam-bench", "figure.dpi": 100, "font.size": 9})
    return plt


def _save(fig, out: Path, name: str) -> str:
    plt = _plt()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", metadata={"Software": None})
    fig.savefig(out / f"{name}.svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return f"{name}.png"


def _plain_log_axis(axis) -> None:
    """Log scale with numbers written plainly (200, not 2 x 10^2)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _label(v: str, lvl: str) -> str:
    return f"{v} @ {lvl}"


def plot_pareto(col: Collected, out: Path) -> str:
    pts = [g for g in col.groups.values() if g.level != REFERENCE_LEVEL and not g.na_reason
           and g.metrics["latency_ms"]["p50"] and g.metrics["progress_mean"] is not None]
    if not pts:
        return "no cell has both latency and task progress"
    plt = _plt()
    suites = sorted({g.suite for g in pts}, key=suite_order)
    fig, axes = plt.subplots(1, len(suites), figsize=(5.5 * len(suites), 4.2), squeeze=False)
    variants = sorted({g.variant for g in pts}, key=variant_order)
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    markers = "o^sDvP*X"
    for ax, s in zip(axes[0], suites):
        gs = sorted([g for g in pts if g.suite == s], key=lambda g: (variant_order(g.variant), level_order(g.level)))
        for g in gs:
            m = g.metrics
            x, y = m["latency_ms"]["p50"], m["progress_mean"]
            lo, hi = m["progress_ci95"]
            mk = markers[LEVELS.index(g.level) % len(markers)] if g.level in LEVELS else "o"
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], xerr=[[0], [m["latency_ms"]["p95"] - x]],
                        fmt=mk, color=colors[g.variant], capsize=3, ms=7, label=_label(g.variant, g.level))
        front, best = [], -math.inf
        for g in sorted(gs, key=lambda g: (g.metrics["latency_ms"]["p50"], -g.metrics["progress_mean"])):
            if g.metrics["progress_mean"] > best:
                best = g.metrics["progress_mean"]
                front.append((g.metrics["latency_ms"]["p50"], best))
        if len(front) > 1:
            ax.step(*zip(*front), where="post", color="0.5", ls="--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel("latency per call, ms (p50; bar to p95)")
        ax.set_ylabel("task progress (95% bootstrap CI)")
        ax.set_title(s)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out, "pareto")


def plot_ablation(col: Collected, rows: list[dict], out: Path) -> str:
    rows = [r for r in rows if r["success_pct"] is not None]
    if not rows:
        return "no headline cell has a success rate"
    plt = _plt()
    import numpy as np
    suites = sorted({r["suite"] for r in rows}, key=suite_order)
    variants = sorted({r["variant"] for r in rows}, key=variant_order)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(suites) * len(variants) ** 0.5 + 3), 4.2))
    width = 0.8 / len(variants)
    by = {(r["variant"], r["suite"]): r for r in rows}
    for i, v in enumerate(variants):
        xs, ys, err, paper_x, paper_y = [], [], [[], []], [], []
        for j, s in enumerate(suites):
            r = by.get((v, s))
            x = j - 0.4 + width * (i + 0.5)
            if r:
                xs.append(x)
                ys.append(r["success_pct"])
                err[0].append(r["success_pct"] - r["success_lo_pct"])
                err[1].append(r["success_hi_pct"] - r["success_pct"])
            if r and r["paper_success_pct"] is not None:
                paper_x.append(x)
                paper_y.append(r["paper_success_pct"])
        ax.bar(xs, ys, width * 0.95, yerr=np.array(err), capsize=2, label=v, color=plt.cm.tab10(i % 10))
        if paper_x:
            ax.scatter(paper_x, paper_y, marker="_", s=200, color="k", zorder=3,
                       label="paper" if i == 0 or not any(c.get_label() == "paper" for c in ax.collections) else None)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_xlim(-0.5, len(suites) - 0.5)
    ax.set_ylabel("success % (Wilson 95% CI)")
    ax.set_ylim(0, 105)
    ax.set_title("Ablation at each variant's headline level")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "ablation")


def plot_ladder(rows: list[dict], out: Path) -> str:
    rows = [r for r in rows if r["speedup"] is not None]
    series = defaultdict(list)
    for r in rows:
        series[(r["variant"], r["suite"])].append(r)
    series = {k: v for k, v in series.items() if len(v) > 1}
    if not series:
        return "no variant was timed at two or more levels"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    levels = sorted({r["level"] for rs in series.values() for r in rs}, key=level_order)
    for i, ((v, s), rs) in enumerate(sorted(series.items(), key=lambda kv: (variant_order(kv[0][0]),
                                                                            suite_order(kv[0][1])))):
        ax.plot([levels.index(r["level"]) for r in rs], [r["speedup"] for r in rs], "o-",
                color=plt.cm.tab10(i % 10), label=f"{v} ({s})")
    ref = paper_ladder()
    px = [(levels.index(lvl), ref[lvl]["h100"]) for lvl in levels if lvl in ref and ref[lvl]["h100"]]
    if px and any(v.startswith("dreamzero") for v, _ in series):
        ax.plot(*zip(*px), "k--x", label="DreamZero paper (H100, over its baseline)")
    ax.set_xticks(range(len(levels)), levels, rotation=20)
    ax.set_ylabel("cumulative speed-up of p50 latency (×)")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_title("Inference-optimization ladder")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, "ladder")


def plot_losses(col: Collected, out: Path) -> str:
    runs = [(c, [r for r in losses if r.get("step") is not None]) for c, losses in col.train]
    runs = [(c, ls) for c, ls in runs if ls]
    if not runs:
        return "no train cell has loss.jsonl records"
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    variants = sorted({c.key.variant for c, _ in runs}, key=variant_order)
    for c, ls in sorted(runs, key=lambda r: (variant_order(r[0].key.variant), r[0].key.suite, r[0].key.seed)):
        color = plt.cm.tab10(variants.index(c.key.variant) % 10)
        for ax, name in zip(axes, ("loss_video", "loss_action")):
            pts = [(r["step"], r[name]) for r in ls if r.get(name) is not None]
            if pts:
                ax.plot(*zip(*pts), color=color, lw=1.2,
                        label=f"{c.key.variant} ({c.key.suite}, seed {c.key.seed})")
    for ax, title in zip(axes, ("video loss", "action loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not trained with this loss", ha="center", transform=ax.transAxes)
    return _save(fig, out, "losses")


def plot_heatmap(col: Collected, out: Path) -> str:
    suites = []
    for s in col.suites:
        rows = [(v, col.groups[(v, s, col.headline_level(v))]) for v in col.variants
                if (v, s, col.headline_level(v)) in col.groups]
        rows = [(v, g) for v, g in rows if g.per_task]
        if rows:
            suites.append((s, rows))
    if not suites:
        return "no episode finished without error"
    plt = _plt()
    import numpy as np
    heights = [len(rows) for _, rows in suites]
    widths = [len({t for _, g in rows for t in g.per_task}) for _, rows in suites]
    fig, axes = plt.subplots(len(suites), 1, squeeze=False,
                             figsize=(min(24, max(7, 3 + 0.5 * max(widths))), 1.2 + sum(0.45 * h + 1.3 for h in heights)),
                             gridspec_kw={"height_ratios": [h + 2 for h in heights]})
    for ax, (s, rows) in zip(axes[:, 0], suites):
        tasks = sorted({t for _, g in rows for t in g.per_task})
        data = np.full((len(rows), len(tasks)), np.nan)
        for i, (_, g) in enumerate(rows):
            for j, t in enumerate(tasks):
                if t in g.per_task:
                    data[i, j] = 100 * g.per_task[t]["success_rate"]
        im = ax.imshow(data, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(tasks)):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="w" if data[i, j] < 60 else "k")
        ax.set_yticks(range(len(rows)), [v for v, _ in rows])
        ax.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{s}: success % per task (headline level)")
        fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, out, "per_task")


# ------------------------------------------------------------------------------ HTML

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}td{text-align:right;white-space:nowrap}td:first-child,td.l{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}.note{color:#a33}.muted{color:#666}
h2{border-bottom:1px solid #ddd;padding-bottom:3px}code{background:#f4f4f4;padding:1px 3px}"""


def _html_table(header: list[str], body: list[list[str]]) -> str:
    e = html.escape
    return ("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in body) + "</table>")


def _provenance_summary(col: Collected) -> tuple[list[list[str]], dict]:
    """Distinct commits / machines / package sets over the cells' result.json files."""
    commits, machines, packages, times = defaultdict(int), defaultdict(int), defaultdict(set), []
    for r in col.results:
        p = r.get("provenance") or {}
        if not p:
            continue
        g = p.get("git") or {}
        commits[(str(g.get("commit"))[:12] + (" (dirty)" if g.get("dirty") else ""))] += 1
        hw = p.get("hardware") or {}
        machines[f"{p.get('hostname', '?')}: {hw.get('cpu', '?')}, {hw.get('cores', '?')} cores, "
                 f"{hw.get('memory_gb', '?')} GB, GPU {hw.get('gpu') or 'none'}, MUJOCO_GL={p.get('mujoco_gl')}"] += 1
        for name, ver in (p.get("packages") or {}).items():
            packages[name].add(str(ver))
        times += [t for t in (r.get("started"), r.get("finished")) if t]
    rows = [["commits", "; ".join(f"{c} ×{n}" for c, n in sorted(commits.items())) or "—"],
            ["machines", "; ".join(f"{m} ×{n}" for m, n in sorted(machines.items())) or "—"],
            ["packages", "; ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(packages.items())) or "—"],
            ["dates", f"{min(times)} … {max(times)}" if times else "—"]]
    return rows, {"commits": len(commits), "machines": len(machines)}


def write_html(col: Collected, out: Path, sections: dict) -> Path:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>wam-bench: {e(col.experiment)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>wam-bench report: {e(col.experiment)}</h1>"]
    n_train, n_eval = len(col.train), len(col.cells) - len(col.train)
    n_eps = sum(g.metrics["n_episodes"] for g in col.groups.values())
    parts.append(f"<p>{len(col.cells)} cells ({n_eval} eval, {n_train} train), {n_eps} episodes. "
                 "Success: Wilson 95% interval, errors excluded and counted apart; progress: bootstrap 95% "
                 "interval of the mean (2000 resamples, seed 0); latency per inference call with each cell's "
                 "first call excluded as warm-up. Seeds are pooled per (variant, suite, level).</p>")
    prov_rows, counts = _provenance_summary(col)
    if counts["commits"] > 1 or counts["machines"] > 1:
        parts.append(f"<p class='note'>These results mix {counts['commits']} commits and "
                     f"{counts['machines']} machines: latency comparisons across them are not like for like.</p>")
    parts.append("<h2>Missing, failed, too few episodes</h2>")
    problems = [f"missing: {m}" for m in col.missing] + col.notes
    parts.append("<ul>" + "".join(f"<li class='note'>{e(p)}</li>" for p in problems) + "</ul>"
                 if problems else "<p>Nothing missing or failed; every cell has enough episodes.</p>")
    for title, (header, body, note) in sections["tables"].items():
        parts.append(f"<h2>{e(title)}</h2><p class='muted'>{e(note)}</p>")
        parts.append(_html_table(header, body) if body else "<p class='note'>No rows.</p>")
    parts.append("<h2>Plots</h2>")
    for title, (png, reason) in sections["plots"].items():
        parts.append(f"<h3>{e(title)}</h3>")
        if png:
            data = base64.b64encode((out / png).read_bytes()).decode()
            parts.append(f"<img alt='{e(title)}' src='data:image/png;base64,{data}'>")
        else:
            parts.append(f"<p class='note'>Not drawn: {e(reason)}.</p>")
    parts.append("<h2>Provenance</h2>" + _html_table(["", ""], prov_rows))
    cell_rows = [[c.key.variant, c.key.suite, f"seed{c.key.seed}", c.key.opt_level, c.status(),
                  str(c.path)] for c in col.cells]
    parts.append("<h3>Cells</h3>" + _html_table(["variant", "suite", "seed", "level", "status", "path"], cell_rows))
    parts.append(f"<p class='muted'>Published numbers: {e(papers()['fastwam']['source'])}; "
                 f"{e(papers()['dreamzero']['source'])}.</p></body></html>\n")
    path = out / "index.html"
    path.write_text("".join(parts))
    return path


# ------------------------------------------------------------------------------ entry points

def write_report(store_root: str | Path, experiment: str, out_root: str | Path = "reports",
                 expected: list[CellKey] | None = None, min_episodes: int = MIN_EPISODES) -> Path:
    """Write reports/<experiment>/ and return the path of its index.html.

    `expected` (the grid the run meant to fill) lets the report list cells that never started.
    """
    store = Store(store_root)
    if experiment not in store.experiments():
        have = ", ".join(store.experiments()) or "none"
        raise UserError(f"no experiment {experiment!r} in {store.root} (experiments: {have})")
    col = collect(store, experiment, expected, min_episodes)
    if not col.cells:
        raise UserError(f"experiment {experiment!r} in {store.root} has no cells yet; run it first")
    out = Path(out_root) / experiment
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("pareto", "ablation", "ladder", "losses", "per_task"):  # a plot no longer drawn must go
        for ext in ("png", "svg"):
            (out / f"{stale}.{ext}").unlink(missing_ok=True)

    abl = ablation_rows(col)
    write_csv(out / "ablation.csv", abl, list(abl[0]) if abl else ["variant", "suite", "level"])
    header, body, groups = ablation_grid(col, abl)
    caption = ("Ablation (variant x suite) at each variant's headline level (its lowest optimization level "
               "present); success % with Wilson 95% interval, task progress with bootstrap 95% interval, "
               "n valid episodes pooled over seeds; paper: published success %.")
    (out / "ablation.md").write_text(f"<!-- {caption} -->\n" + markdown(header, body))
    (out / "ablation.tex").write_text(latex(header, body, caption, f"tab:{experiment}-ablation", groups, lead=2))

    lad = ladder_rows(col)
    write_csv(out / "ladder.csv", lad, list(lad[0]) if lad else ["variant", "suite", "level"])
    lbody = ladder_grid(lad)
    lcaption = ("Inference-optimization ladder: latency per call (warm-up excluded), speed-up of p50 over the "
                "variant's lowest level present, effective denoising steps, task progress; paper: DreamZero "
                "cumulative speed-up over its baseline (which maps to O1-kvcache).")
    (out / "ladder.md").write_text(f"<!-- {lcaption} -->\n" + markdown(LADDER_COLS, lbody))
    (out / "ladder.tex").write_text(latex(LADDER_COLS, lbody, lcaption, f"tab:{experiment}-ladder", lead=3))

    write_csv(out / "cells.csv", [{"variant": c.key.variant, "suite": c.key.suite, "seed": c.key.seed,
                                   "level": c.key.opt_level, "status": c.status(), "path": str(c.path)}
                                  for c in col.cells], ["variant", "suite", "seed", "level", "status", "path"])

    plots = {}
    for title, fn in (("Latency vs task progress (Pareto)", lambda: plot_pareto(col, out)),
                      ("Ablation: success per variant and suite", lambda: plot_ablation(col, abl, out)),
                      ("Optimization ladder: cumulative speed-up", lambda: plot_ladder(lad, out)),
                      ("Training loss (video and action)", lambda: plot_losses(col, out)),
                      ("Success per task", lambda: plot_heatmap(col, out))):
        r = fn()
        plots[title] = (r, None) if r.endswith(".png") else (None, r)
    tables = {"Ablation (variant × suite)": (header, body, caption),
              "Optimization ladder (variant × level)": (LADDER_COLS, lbody, lcaption)}
    # --- robustness (clean vs LIBERO-PRO perturbed): harness/results/robustness.py, shown when it has rows
    from harness.results import robustness
    rob = robustness.section(col, out)
    if rob["table"][1]:
        tables["Robustness (clean vs perturbed)"] = rob["table"]
        plots["Robustness: success drop per perturbation family"] = rob["plot"]
    # --- end robustness
    return write_html(col, out, {"tables": tables, "plots": plots})


def add_arguments(p):
    p.add_argument("--experiment", default=None, help="one experiment (default: every experiment in the store)")
    p.add_argument("--root", default="results", help="results store (default: results)")
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument("--min-episodes", type=int, default=MIN_EPISODES,
                   help=f"flag cells with fewer valid episodes as too few to compare (default {MIN_EPISODES})")


def main(args) -> int:
    store = Store(args.root)
    exps = [args.experiment] if args.experiment else store.experiments()
    if not exps:
        raise UserError(f"no experiments in {store.root}; run `wam-bench run` or `wam-bench eval` first")
    for exp in exps:
        path = write_report(args.root, exp, args.out, min_episodes=args.min_episodes)
        print(f"wrote {path.parent}/ (open {path})")
    return 0
