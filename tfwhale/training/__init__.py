"""Stage 2 (train): the fold loop, distribution, schedules, checkpoints, validation, run records."""
