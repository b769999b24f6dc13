"""torch.compile holds: the compiled levels trace the backbone without recompiling call after call.

Dynamo's own tracing (backend "eager", no code generation) is what guards and recompiles, so
this checks the issue-17 failure — dreamzero at O6 hit the recompile limit ("Cache line
invalidated because L['___stack0'] got deallocated") and fell back to eager — without paying
for inductor."""
import numpy as np
import pytest
import torch


@pytest.mark.slow
@pytest.mark.parametrize("level_name", ["O4-compile", "O6-flash"])
def test_dreamzero_compiles_once_per_context_shape(level_name):
    from torch._dynamo.utils import counters
    from harness.bench.latency import _inputs, _random_model
    from harness.config import Registry
    from harness.policy.levels import infer_options, quantize_int8
    torch._dynamo.reset()
    counters.clear()
    reg = Registry()
    level = reg.opt_level(level_name)
    model = _random_model("dreamzero", reg, 4, 4)
    if level.precision == "int8":
        model.net = quantize_int8(model.net)
    model.net = torch.compile(model.net, dynamic=True, backend="eager")
    opts = infer_options(level)
    lat, state, blocks = _inputs(model, np.zeros((64, 64, 3), np.uint8))

    def one_round(r):
        for n in range(len(blocks) + 1):  # every context length an episode meets
            model.sample(lat, state, ["pick up the red cube"], opts, r, blocks[:n])
    one_round(0)
    graphs = counters["stats"]["unique_graphs"]
    one_round(1)
    one_round(2)
    assert counters["stats"]["unique_graphs"] == graphs  # later rounds reuse every graph
    assert not [r for r in counters["graph_break"] if "unflatten" in r or "generator" in r]

