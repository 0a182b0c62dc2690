"""Shared helpers for integration tests (real processes, cgroups and containers)."""
