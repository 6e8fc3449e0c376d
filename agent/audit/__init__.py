"""Tamper-evident audit log of the management plane (HMAC chain, rotation, head pointer, syslog)."""
