"""Operator tooling: the local cluster runner, user administration, bus debugging."""
