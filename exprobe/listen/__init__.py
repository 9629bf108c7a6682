"""`exprobe listen`: rehearsal listeners that answer each protocol a profile needs.

Before the real servers exist, open every port the profile's scenarios use on the
future server's address, answer each with a minimal, correct handshake that names
exprobe, log who reached which port, and let `exprobe run` from the client side say
scenario by scenario whether the firewall path is ready.

- `core`: the server framework (limits, timeouts, TLS, one log record per connection);
- `mail`, `ldap`, `rfc1006`, `msrpc`: the responders;
- `plan`: from a profile's checks to listeners (ports, TLS, endpoint-mapper registrations);
- `tlscert`: the self-signed certificate made at start-up;
- `service`: start a plan on addresses (shared by `exprobe listen` and `exprobe demo`).
"""
