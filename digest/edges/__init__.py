"""The edges people and programs touch: the `digest` command, the web app and the demo.

Each parses input, calls a service, shows the result.
"""
