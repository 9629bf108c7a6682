"""Hostile peers that no real server imitates: silence, drip, floods, garbage, resets."""
