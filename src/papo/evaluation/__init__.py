"""Evaluation: validation metrics (real vs masked image), shared by training-time validation and eval."""
