"""Training: optimiser and schedule, mesh and shardings, checkpoints, the loop."""
