"""Accounts, passwords, sessions, the first-boot claim and brute-force throttling."""
