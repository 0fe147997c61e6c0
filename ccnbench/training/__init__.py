"""Training the fusion designs: shape trace, training-equivalent merged forms, the training-step
benchmark, trained checkpoints, and their commands."""
