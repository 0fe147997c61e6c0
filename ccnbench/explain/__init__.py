"""`ccnbench explain`: where each format spends its time, layer by layer, from each runtime's own
profiler, with the layers of two formats matched row by row."""
