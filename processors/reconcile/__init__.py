"""Reconciliation (`kycstream reconcile`): expectations and their polls, fetched results, provider
API calls, credentials and rate limits."""
