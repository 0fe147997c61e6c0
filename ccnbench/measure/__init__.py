"""Measuring one runner: the timing protocol and the samples it records, memory, and agreement
with the float64 oracle."""
