"""`wam-bench bench NAME`: measure one figure family, print a Markdown table, write JSON.

Each family is a module `harness/bench/<name>.py` with `add_arguments(parser)` (optional) and
`measure(args) -> {"figures": {name: number}, "rows": [dict, ...]}`. Comparisons are ratios
measured side by side in the same run, because this machine is shared and noisy.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from pathlib import Path

FAMILIES = ["train", "sim", "eval", "latency", "scaling", "gpu", "serve", "demos", "agreement"]


def add_arguments(p):
    p.add_argument("name", choices=FAMILIES)
    p.add_argument("--quick", action="store_true", help="finish in under a minute (CI, spot checks)")
    p.add_argument("--out", default=None, help="JSON file (default reports/bench_<name>.json)")
    p.add_argument("--suite", default=None, help="suite for sim/eval benches")
    p.add_argument("--variants", default=None, help="comma-separated variants (latency bench)")
    p.add_argument("--checkpoint", default=None, help="checkpoint for eval/latency benches")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--workers", type=int, default=None, help="train bench: training processes to compare with one")
    p.add_argument("--frame-stride", type=int, default=4, help="sim bench: control steps between rendered frames")
    p.add_argument("--episodes", type=int, default=None, help="agreement bench: init states per task (default: the suite's)")
    p.add_argument("--policy", choices=["expert"], default=None,
                   help="agreement bench: the scripted expert's actions, recorded in our environment, replayed on both sides")


def machine() -> dict:
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "cores": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def git_commit() -> str | None:
    from harness.results.provenance import git_state
    return git_state()["commit"]


def main(args) -> int:
    from harness.results.tables import dict_table
    family = importlib.import_module(f"harness.bench.{args.name}")
    out = family.measure(args)
    doc = {"bench": args.name, "quick": bool(args.quick), "figures": out["figures"], "rows": out.get("rows", []),
           "notes": out.get("notes", []), "machine": machine(), "commit": git_commit()}
    print(dict_table(doc["rows"]))
    for note in doc["notes"]:
        print(f"note: {note}")
    print()
    for k, v in doc["figures"].items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    path = Path(args.out or f"reports/bench_{args.name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {path}")
    return 0
