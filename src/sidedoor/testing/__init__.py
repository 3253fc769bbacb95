"""Helpers for tests: in-memory session pairs, deterministic identities."""
