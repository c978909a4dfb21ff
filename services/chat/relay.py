"""Hands a model's output from the task that reads it to the stream that writes it.

The reader puts each chunk's text as it arrives; the writer takes everything put since
its last take. A writer that keeps up gets every chunk on its own (the first is never
held back); one that falls behind, because its writes wait for a client that reads
slower than the model writes, gets the backlog as one piece: fewer, larger messages
instead of a queue of small ones.
"""

from __future__ import annotations

import asyncio


class DeltaRelay:
    """One reader (`put`, then `close`) and one writer (`take`)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._closed = False
        self._ready = asyncio.Event()

    def put(self, text: str) -> None:
        """Queue `text` for the writer."""
        self._parts.append(text)
        self._ready.set()

    def close(self) -> None:
        """No more text will come; the writer gets what is queued, then None."""
        self._closed = True
        self._ready.set()

    def take_nowait(self) -> str:
        """Everything queued (possibly nothing), without waiting."""
        text = "".join(self._parts)
        self._parts.clear()
        return text

    async def take(self) -> str | None:
        """Everything queued since the last take (waiting for some), or None once the
        reader closed and nothing is left."""
        while not self._parts:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        text = "".join(self._parts)
        self._parts.clear()
        return text
