"""Observation operators H and the observation sets that carry y, σ and masks through a window."""
