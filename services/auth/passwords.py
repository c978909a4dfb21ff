"""bcrypt hashing on a bounded thread pool, so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

import bcrypt

Args = TypeVarTuple("Args")
Result = TypeVar("Result")


class PasswordHasher:
    """Hashes and checks passwords with bcrypt off the event loop (bcrypt releases the GIL)."""

    def __init__(self, cost: int, workers: int | None = None) -> None:
        self._cost = cost
        self._pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2,
                                        thread_name_prefix="bcrypt")
        # Checked against when the user does not exist, so both paths cost the same.
        self._dummy_hash = bcrypt.hashpw(b"llmmesh-timing-equaliser", bcrypt.gensalt(cost))

    async def hash(self, password: str) -> str:
        salt = bcrypt.gensalt(self._cost)
        hashed = await self._run(bcrypt.hashpw, password.encode("utf-8"), salt)
        return hashed.decode("ascii")

    async def verify(self, password: str, hashed: str | None) -> bool:
        """True when `password` matches; always spends one bcrypt check."""
        target = hashed.encode("ascii") if hashed else self._dummy_hash
        matches = await self._run(bcrypt.checkpw, password.encode("utf-8"), target)
        return bool(matches) and bool(hashed)  # no hash (or an empty one): never a match

    async def _run(self, function: Callable[[*Args], Result], *args: *Args) -> Result:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
