"""Argon2id password hashing sized for a 256 MB camera, run off the event loop.

m = 19 MiB, t = 2, p = 1 is OWASP's minimum for Argon2id; at most ``concurrency`` hashes run at
once (a small semaphore), so a login storm costs a bounded ~19 MiB x concurrency of RAM and never
blocks the loop that also serves RTSPS. argon2-cffi is used directly instead of passlib (passlib
1.7.4 breaks with bcrypt >= 5 and imports the removed ``crypt`` module); ``check_needs_rehash``
gives passlib's upgrade-on-login.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@dataclass(frozen=True)
class Argon2Params:
    time_cost: int = 2
    memory_cost_kib: int = 19 * 1024
    parallelism: int = 1


class AsyncHasher:
    def __init__(self, params: Argon2Params = Argon2Params(), concurrency: int = 2) -> None:
        self._ph = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost_kib,
            parallelism=params.parallelism,
            type=Type.ID,
        )
        self._sem = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argon2")
        # Verified against for unknown users so their timing matches a real account's. Hashed in
        # the pool (argon2 releases the GIL): on the board's emulated CPU it takes about a second,
        # which would otherwise delay the HTTPS listener.
        self._dummy = self._pool.submit(self._ph.hash, "dummy password for timing equalisation")

    def hash_sync(self, password: str) -> str:
        return self._ph.hash(password)

    async def hash(self, password: str) -> str:
        async with self._sem:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._ph.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        against = stored if stored is not None else self._dummy.result()
        try:
            return self._ph.verify(against, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """True only for a real stored hash that matches. ``None`` burns the same time and fails."""
        async with self._sem:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._verify, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        return self._ph.check_needs_rehash(stored)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
