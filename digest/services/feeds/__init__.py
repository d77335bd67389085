"""Feeds in: fetching (the one httpx client factory, the guard against private
addresses, TLS), collecting entries into the database, and checking links.
"""
