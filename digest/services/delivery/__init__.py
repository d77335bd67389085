"""An issue out to its readers: recording it with its deliveries and batches, sending
claimed batches through a transport, the `--jobs` helpers, and the counts of outcomes.
"""
