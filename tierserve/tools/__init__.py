"""Offline tools users run on their own data: calibrate, simulate, quality metrics."""
