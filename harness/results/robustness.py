"""Robustness: each variant's clean and perturbed (LIBERO-PRO) results side by side.

A perturbed suite says what it perturbs in its own spec (`options.perturbation`, e.g. language,
and `options.clean_suite`, e.g. libero_spatial: suites/libero_pro_*.yaml), and every result.json
stores the spec it ran, so the rows come from the store alone. One row per (variant, level,
clean suite, family) where both cells exist: success on each, the drop in points (clean minus
perturbed) with Newcombe's 95% interval for a difference of two independent proportions (built
from the two Wilson intervals; it stays inside [-100, 100] and is sensible at 0 % and 100 %),
and Fisher's one-sided p that the perturbed rate is below the clean one.

`section(col, out)` is what the report calls: it writes robustness.{csv,md} and a plot, and
returns the table and the plot for the HTML page.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from harness.results.stats import two_proportion_test, wilson

FAMILIES = ["language", "object", "position", "task"]  # LIBERO-PRO's, in its order; others sort after
COLUMNS = ["variant", "level", "clean_suite", "perturbation", "suite", "clean_success_pct", "clean_n",
           "perturbed_success_pct", "perturbed_n", "drop_pts", "drop_lo_pts", "drop_hi_pts", "p_value",
           "clean_progress", "perturbed_progress"]
HEADER = ["variant", "level", "clean suite", "perturbation", "clean success % (n)", "perturbed success % (n)",
          "drop, points [95% CI]", "p (perturbed < clean)", "progress clean → perturbed"]
CAPTION = ("Robustness (LIBERO-PRO): success on the clean suite and on each perturbation family, same variant and "
           "level, seeds pooled; drop = clean − perturbed in points with Newcombe's 95% interval; p: Fisher's "
           "exact one-sided test that the perturbed rate is lower.")


def drop_interval(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """p1 − p2 and its Newcombe (hybrid Wilson score) 95% interval, as fractions."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def perturbations(col) -> dict[str, tuple[str, str]]:
    """{suite: (family, clean suite)} for every perturbed suite among the collected results."""
    out = {}
    for r in col.results:
        opts = ((r.get("config") or {}).get("suite") or {}).get("options") or {}
        if opts.get("perturbation") and opts.get("clean_suite"):
            out[r["suite"]] = (str(opts["perturbation"]), str(opts["clean_suite"]))
    return out


def _family_order(f: str) -> tuple:
    return (FAMILIES.index(f), f) if f in FAMILIES else (len(FAMILIES), f)


def rows(col) -> list[dict]:
    """Long format, one row per (variant, level, clean suite, family); cells without valid episodes
    are left out. `col` is the report's collected store: `.groups` {(variant, suite, level): group
    with `.metrics` (stats.summarize) and `.na_reason`} and `.results` (the result.json dicts)."""
    labels = perturbations(col)
    out = []
    for (v, s, lvl), g in col.groups.items():
        if s not in labels or g.na_reason:
            continue
        family, clean = labels[s]
        c = col.groups.get((v, clean, lvl))
        if c is None or c.na_reason:
            continue
        mc, mp = c.metrics, g.metrics
        if not mc["n_valid"] or not mp["n_valid"]:
            continue
        d, lo, hi = drop_interval(mc["n_success"], mc["n_valid"], mp["n_success"], mp["n_valid"])
        out.append({"variant": v, "level": lvl, "clean_suite": clean, "perturbation": family, "suite": s,
                    "clean_success_pct": round(100 * mc["success_rate"], 4), "clean_n": mc["n_valid"],
                    "perturbed_success_pct": round(100 * mp["success_rate"], 4), "perturbed_n": mp["n_valid"],
                    "drop_pts": round(100 * d, 4), "drop_lo_pts": round(100 * lo, 4), "drop_hi_pts": round(100 * hi, 4),
                    "p_value": float(f"{two_proportion_test(mc['n_success'], mc['n_valid'], mp['n_success'], mp['n_valid']):.3g}"),
                    "clean_progress": _r(mc["progress_mean"]), "perturbed_progress": _r(mp["progress_mean"])})
    out.sort(key=lambda r: (r["variant"], r["level"], r["clean_suite"], _family_order(r["perturbation"])))
    return out


def _r(x):
    return None if x is None else round(float(x), 4)


def table(rs: list[dict]) -> list[list[str]]:
    body = []
    for r in rs:
        prog = "—" if r["clean_progress"] is None or r["perturbed_progress"] is None else \
            f"{r['clean_progress']:.2f} → {r['perturbed_progress']:.2f}"
        body.append([r["variant"], r["level"], r["clean_suite"], r["perturbation"],
                     f"{r['clean_success_pct']:.1f} ({r['clean_n']})", f"{r['perturbed_success_pct']:.1f} ({r['perturbed_n']})",
                     f"{r['drop_pts']:+.1f} [{r['drop_lo_pts']:+.1f}, {r['drop_hi_pts']:+.1f}]",
                     f"{r['p_value']:.3g}", prog])
    return body


def plot(rs: list[dict], out: Path) -> str:
    """Success drop per family (bars with 95% intervals), one panel per clean suite, one colour per
    variant @ level; returns the PNG's name, or why nothing was drawn."""
    if not rs:
        return "no variant has both a clean and a perturbed (LIBERO-PRO) cell"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.hashsalt": "wam-bench", "figure.dpi": 100, "font.size": 9})
    suites = list(dict.fromkeys(r["clean_suite"] for r in rs))
    series = list(dict.fromkeys((r["variant"], r["level"]) for r in rs))
    fig, axes = plt.subplots(1, len(suites), figsize=(4.5 * len(suites) + 1, 4), squeeze=False, sharey=True)
    width = 0.8 / len(series)
    for ax, s in zip(axes[0], suites):
        fams = sorted({r["perturbation"] for r in rs if r["clean_suite"] == s}, key=_family_order)
        for i, key in enumerate(series):
            pts = [(fams.index(r["perturbation"]), r) for r in rs if r["clean_suite"] == s and (r["variant"], r["level"]) == key]
            if not pts:
                continue
            xs = [x - 0.4 + width * (i + 0.5) for x, _ in pts]
            ys = [r["drop_pts"] for _, r in pts]
            err = [[r["drop_pts"] - r["drop_lo_pts"] for _, r in pts], [r["drop_hi_pts"] - r["drop_pts"] for _, r in pts]]
            ax.bar(xs, ys, width * 0.95, yerr=err, capsize=2, color=plt.cm.tab10(i % 10), label=f"{key[0]} @ {key[1]}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(fams)), fams)
        ax.set_xlim(-0.5, len(fams) - 0.5)
        ax.set_title(f"{s}: clean − perturbed")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("success drop, points (Newcombe 95% CI)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "robustness.png", metadata={"Software": None})
    fig.savefig(out / "robustness.svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return "robustness.png"


def section(col, out: Path) -> dict:
    """Write robustness.{csv,md,png,svg} into `out`; returns {"table": (header, body, caption),
    "plot": (png or None, reason or None)} for the HTML page (the table is empty without LIBERO-PRO cells)."""
    rs = rows(col)
    with open(out / "robustness.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: "" if r.get(k) is None else r[k] for k in COLUMNS} for r in rs)
    body = table(rs)
    esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    md = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(map(esc, b)) + " |" for b in body]
    (out / "robustness.md").write_text(f"<!-- {CAPTION} -->\n" + "\n".join(md) + "\n")
    for ext in ("png", "svg"):
        (out / f"robustness.{ext}").unlink(missing_ok=True)
    p = plot(rs, out)
    return {"table": (HEADER, body, CAPTION), "plot": (p, None) if p.endswith(".png") else (None, p)}
