"""Scripted peers for tests (servers that misbehave on purpose or stand in for Exchange)."""
