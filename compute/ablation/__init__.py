"""Zero ablation of units: the result types, the naive reference, the fast suffix engine and cumulative curves."""
