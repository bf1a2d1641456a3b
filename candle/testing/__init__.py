"""Helpers for tests, benchmarks and the offline demo: a Hub look-alike and tiny model stores."""
