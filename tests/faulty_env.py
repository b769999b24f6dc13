"""Fault injection for the evaluator's tests (named so: not a real simulator)."""
import os

from harness.suites.base import SimulatorError
from harness.suites.tabletop import TabletopEnv


class FaultyTabletopEnv(TabletopEnv):
    """Tabletop whose task 1 raises a simulator fault and task 2 kills its process mid-episode."""

    def step(self, action):
        self._n = getattr(self, "_n", 0) + 1
        if self.task_index == 1 and self._n > 3:
            raise SimulatorError("injected: physics exploded")
        if self.task_index == 2 and self._n > 3:
            os._exit(3)
        return super().step(action)

    def reset(self, init_index, seed):
        self._n = 0
        return super().reset(init_index, seed)


class CountedTabletopEnv(TabletopEnv):
    """Tabletop that appends '+' when made and '-' when closed to the file $WAM_TEST_ENV_LOG, so a
    test can see how many simulators a worker process holds at once."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        with open(os.environ["WAM_TEST_ENV_LOG"], "a") as f:
            f.write("+")

    def close(self):
        with open(os.environ["WAM_TEST_ENV_LOG"], "a") as f:
            f.write("-")
        return super().close()
