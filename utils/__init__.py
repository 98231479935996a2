"""Shared helpers: metrics, results files, checkpoints, seeding, devices, user-facing errors."""
