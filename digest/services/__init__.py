"""The stateful services: storage, collecting, building and recording issues,
delivery and its transports, and what operators run (status, backups, metrics, logs).

They use the core; the edges call them; they never import the edges.
"""
