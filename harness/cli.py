"""`wam-bench` command line. Each subcommand lives in the module that owns the concept; this
file only wires them, importing a module when its command runs (so `--help` is instant)."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). The module defines `add_arguments(parser)` and `main(args)`.
COMMANDS = {
    "variants": ("harness.model.show", "list variants, or `variants show NAME` for the resolved spec"),
    "train": ("harness.train.launch", "train a variant on a LeRobot-format dataset"),
    "demos": ("harness.data.demos", "write scripted-expert demonstrations as a LeRobot dataset"),
    "eval": ("harness.eval.cell", "closed-loop evaluation of a checkpoint on a suite"),
    "serve": ("harness.eval.serve", "serve a checkpoint over websockets, batched: openpi's, XPolicyLab's or "
              "vla-eval's protocol"),
    "run": ("harness.scale.grid", "the grid: demos, train every variant, evaluate, report (the `make run` job)"),
    "ablation": ("harness.scale.ablation", "the paired multi-seed ablation: every variant x K training seeds, "
                 "same episodes and noise, a generalization split, Findings with intervals"),
    "results": ("harness.results.store", "print the results store as a table"),
    "report": ("harness.results.report", "tables, plots and an HTML page from the results store"),
    "import-results": ("harness.results.imports", "other harnesses' result files (vla-eval, RoboTwin) as cells "
                       "of the results store"),
    "bench": ("harness.bench", "measure one figure family and write JSON"),
    "plan": ("harness.scale.plan", "memory per device, FLOPs and wall time of a training recipe on N GPUs"),
    "sweep": ("harness.scale.sweep", "Optuna sweep with persistent storage"),
    "nightly": ("harness.scale.nightly", "regression gate against results/baselines/"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="wam-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--include-path", action="append", default=[], metavar="DIR",
                        help="extra folder with variants/, suites/ or YAML files (repeatable)")
    parser.add_argument("--libero-assets", default=None, metavar="DIR",
                        help="LIBERO scene assets folder (else $LIBERO_ASSETS, then the package's own locations)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads of this command (default: torch's, every core); on a busy machine "
                             "1 can train many times faster")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    # Parse the command name first, then let its module define its own arguments.
    pre, rest = parser.parse_known_args(argv)
    if not pre.command:
        parser.print_help()
        return 2
    if pre.threads is not None:
        if pre.threads < 1:
            print(f"wam-bench: error: --threads must be at least 1, got {pre.threads}", file=sys.stderr)
            return 2
        set_threads(pre.threads)
    from harness.env import gl_defaults
    gl_defaults()  # before a command imports a simulator (MuJoCo picks its GL backend at import)
    module = importlib.import_module(COMMANDS[pre.command][0])
    cmd_parser = argparse.ArgumentParser(prog=f"wam-bench {pre.command}", description=COMMANDS[pre.command][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    args.include_path = pre.include_path
    if pre.libero_assets:  # read by the LIBERO adapter when it creates an environment
        import os
        os.environ["LIBERO_ASSETS"] = str(pre.libero_assets)
    from harness.config import ConfigError
    from harness.errors import UserError
    try:
        return int(module.main(args) or 0)
    except (ConfigError, UserError) as e:
        print(f"wam-bench {pre.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nwam-bench {pre.command}: interrupted; finished work is saved, re-run the same command to resume",
              file=sys.stderr)
        return 130


def set_threads(n: int) -> None:
    """torch's intra-op threads, and OpenMP's/MKL's for what this process starts."""
    import os
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    import torch
    torch.set_num_threads(n)


if __name__ == "__main__":
    sys.exit(main())
