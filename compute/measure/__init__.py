"""Measurement of units: training with a per-class trace, and the evaluation-set statistics (selectivity, gradient signals, anomaly)."""
