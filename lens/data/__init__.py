"""Prompt sets: rows of clean / corrupted / answer / baseline with per-row named positions, built from lists,
files or seeded generators, and the figures over them (mean, spread, sign agreement).

    from lens.data import PromptSet, make_dataset
    ps = make_dataset(model, "ioi", n=50, seed=0)      # or PromptSet.from_lists / from_file
    ps, report = ps.filter(model)                      # the rows the model gets right
    print(ps.summary(), report.summary())

See lens/data/prompt_set.py (the set, its checks and batches), generators.py (the tasks and their sources)
and stats.py (Spread: mean, std, 95% interval, sign agreement).
"""

from lens.data.generators import SOURCES, make_dataset
from lens.data.prompt_set import FilterReport, PromptSet, Row
from lens.data.stats import GridSpread, Spread, grid_spread, spread

__all__ = ["PromptSet", "Row", "FilterReport", "make_dataset", "SOURCES", "Spread", "GridSpread", "spread",
           "grid_spread"]
