"""exprobe's test lab: real servers in a network namespace, nftables as the firewall.

See ``docs/lab.md``; the code is in :mod:`tests.lab.lab`, the pytest fixtures in
:mod:`tests.lab.fixtures`.
"""
