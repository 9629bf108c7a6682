"""Sockets, streams and TLS: the only place exprobe touches the network."""
