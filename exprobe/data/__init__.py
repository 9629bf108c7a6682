"""Data shipped with exprobe: the Exchange build table (exchange_builds.toml)."""
