"""Published reference numbers (papers.yaml) for the report's "paper" columns."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

PAPERS = Path(__file__).with_name("papers.yaml")


@lru_cache(maxsize=1)
def papers() -> dict:
    return yaml.safe_load(PAPERS.read_text())


def paper_success_pct(variant: str, suite: str) -> float | None:
    return papers()["fastwam"]["success_pct"].get(variant, {}).get(suite)


def paper_ladder() -> dict[str, dict]:
    """{our level: ladder step} for the DreamZero steps that have a level of ours."""
    return {s["level"]: s for s in papers()["dreamzero"]["ladder"] if s["level"]}


def paper_baseline_level() -> str:
    """Our level that DreamZero's baseline maps to: the one base of every speed-up the report shows."""
    return next(s["level"] for s in papers()["dreamzero"]["ladder"] if s["step"] == "baseline")
