"""Running the desk: status and health, the dashboard's figures, backups.

The top of the services: it may read everything below, schedules included.
"""
