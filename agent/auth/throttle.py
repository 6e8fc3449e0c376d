"""Brute-force throttling with increasing delays and no permanent lockout (ETSI EN 303 645 5.1-5).

Pure state machine; ``now`` is passed in. Two independent counters:
- per source address: from the ``source_free``-th failure on, each failure doubles the wait, up to
  ``source_cap`` seconds. The attacker's own address is slowed hardest.
- per account (a distributed guess at one account): after ``account_free`` failures the wait
  doubles up to ``account_cap`` seconds - deliberately short, so an attacker hammering "admin" can
  delay the real admin by seconds at most, never lock them out. A source that logged in to that
  account successfully in the last ``trusted_s`` is exempt from the account delay (the real admin
  keeps working during an attack from elsewhere).
A refused-because-waiting attempt does not verify the password (no Argon2 cost) and does not
extend the wait, so throttled floods are cheap for the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThrottlePolicy:
    source_free: int = 5
    source_cap: float = 300.0
    account_free: int = 10
    account_cap: float = 10.0
    base: float = 1.0
    forget_s: float = 3600.0
    trusted_s: float = 30 * 24 * 3600.0
    max_entries: int = 10_000


@dataclass
class _Counter:
    failures: int = 0
    next_allowed: float = 0.0
    last: float = 0.0


@dataclass
class Throttle:
    policy: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    _sources: dict[str, _Counter] = field(default_factory=dict)
    _accounts: dict[str, _Counter] = field(default_factory=dict)
    _trusted: dict[tuple[str, str], float] = field(default_factory=dict)

    def wait_time(self, account: str, source: str, now: float) -> float:
        """Seconds the caller must still wait before this attempt may be checked (0 = go)."""
        wait = 0.0
        src = self._sources.get(source)
        if src is not None:
            wait = max(wait, src.next_allowed - now)
        acc = self._accounts.get(account)
        trusted_until = self._trusted.get((account, source), 0.0)
        if acc is not None and now >= trusted_until:
            wait = max(wait, acc.next_allowed - now)
        return max(0.0, wait)

    def _bump(self, table: dict[str, _Counter], key: str, free: int, cap: float, now: float) -> None:
        c = table.get(key)
        if c is None or now - c.last > self.policy.forget_s:
            c = _Counter()
        c.failures += 1
        c.last = now
        if c.failures >= free:
            c.next_allowed = now + min(cap, self.policy.base * 2 ** (c.failures - free))
        table[key] = c
        self._bound(table, now)

    def _bound(self, table: dict[str, _Counter], now: float) -> None:
        if len(table) <= self.policy.max_entries:
            return
        for k in [k for k, c in table.items() if now - c.last > self.policy.forget_s]:
            del table[k]
        while len(table) > self.policy.max_entries:
            oldest = min(table, key=lambda k: table[k].last)
            del table[oldest]

    def failure(self, account: str, source: str, now: float) -> None:
        self._bump(self._sources, source, self.policy.source_free, self.policy.source_cap, now)
        self._bump(self._accounts, account, self.policy.account_free, self.policy.account_cap, now)

    def success(self, account: str, source: str, now: float) -> None:
        self._sources.pop(source, None)
        self._accounts.pop(account, None)
        self._trusted[(account, source)] = now + self.policy.trusted_s
        if len(self._trusted) > self.policy.max_entries:
            for k in [k for k, t in self._trusted.items() if t < now]:
                del self._trusted[k]
