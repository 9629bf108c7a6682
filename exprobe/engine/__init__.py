"""Plan, schedule and evaluate: knows checks and results, never a protocol."""
