"""What a run tells its operator while it works: JSON log records and Prometheus metrics.

Imports nothing of ours, so every service may report through it.
"""
