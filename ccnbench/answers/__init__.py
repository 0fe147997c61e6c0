"""What a user reads off runs: intervals and verdicts, speed-ups, tables, reports and plots, the
regression gate and the recommendation."""
