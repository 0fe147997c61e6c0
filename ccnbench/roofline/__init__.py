"""How far a format is from what the machine can do: measured roofs, per-layer FLOPs and bytes,
and the roofline reading of a time against both."""
