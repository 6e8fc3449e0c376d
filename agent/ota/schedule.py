"""Maintenance window for automatic updates (ER-01 2.11): pure time arithmetic, local device time.

``window_start``/``window_end`` are "HH:MM"; a window may wrap past midnight (22:00-04:00);
equal start and end mean the whole day. Checks inside the window are spread with jitter so a fleet
does not hit the update server in the same second.
"""

from __future__ import annotations

import datetime as dt
import random

from agent.ota.errors import OtaError


def parse_hhmm(value: str) -> int:
    hh, sep, mm = value.partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or not (0 <= int(hh) < 24 and 0 <= int(mm) < 60):
        raise OtaError(f"bad time of day {value!r}", code="ota.config")
    return int(hh) * 60 + int(mm)


def in_window(now: dt.datetime, start: str, end: str) -> bool:
    t = now.hour * 60 + now.minute
    s, e = parse_hhmm(start), parse_hhmm(end)
    if s == e:
        return True
    if s < e:
        return s <= t < e
    return t >= s or t < e


def seconds_until_window(now: dt.datetime, start: str, end: str, rng: random.Random | None = None,
                         jitter_s: float = 600.0) -> float:
    """0 inside the window (plus jitter); otherwise the time to the next window start plus jitter."""
    r = rng or random.SystemRandom()
    jitter = r.uniform(0, jitter_s)
    if in_window(now, start, end):
        return jitter
    s = parse_hhmm(start)
    start_today = now.replace(hour=s // 60, minute=s % 60, second=0, microsecond=0)
    if start_today <= now:
        start_today += dt.timedelta(days=1)
    return (start_today - now).total_seconds() + jitter
