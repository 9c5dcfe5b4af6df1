"""Benchmarks: each runs our cluster and a baseline in the same run and reports ratios."""
