"""Simulated suites behind one interface (see base.py). Adapters are imported lazily."""
from harness.suites.base import ADAPTERS, Observation, SimulatorError, SuiteEnv, make_env

__all__ = ["ADAPTERS", "Observation", "SimulatorError", "SuiteEnv", "make_env"]
