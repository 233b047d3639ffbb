"""Operator commands over the topics: replay, redrive, inspect (lookup and timeline)."""
