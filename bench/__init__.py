"""Benchmarks: lens against baselines run in the same process on the same weights, printed as ratios."""
