"""What lasts: the schema of every table and its migrations, the database, files only
their owner may read, the on-disk caches, claims on rows, and the run's context.

The lowest of the services: it imports the core and nothing else of ours, so the
audience (`subscribers`) and time (`schedules`) can build on it.
"""
