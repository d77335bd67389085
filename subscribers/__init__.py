"""The audience: subscribers, lists, subscriptions, tokens and suppression."""
