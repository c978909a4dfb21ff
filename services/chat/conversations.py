"""Conversations and their completed turns in Redis, per user.

Keys share the user's hash tag: `chat:{user}:convs` (sorted set of conversation ids
by last update), `chat:{user}:conv:{id}` (hash: title, create/update times, message
count) and `chat:{user}:conv:{id}:msgs` (list of JSON messages, oldest first).
A turn (the user's message and the answer) is appended in one atomic script, only
once it has completed; every write extends the conversation's retention, and
conversations idle past it expire (their index entry is pruned on the next write
or list).
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from services.chat.events import Source, Usage
from services.chat.prompts import HistoryMessage
from services.runtime.redis_client import RedisClient, scored_members, text_hash

TITLE_CHARS = 60

# KEYS: index, conversation, messages. ARGV: id, now ms, retention s, title, is new,
# user message, assistant message, retention ms. A turn whose answer is already the
# last message is not appended again (a retry after a reply that was lost).
_APPEND = """
if redis.call('LINDEX', KEYS[3], -1) == ARGV[7] then return 1 end
if ARGV[5] == '0' and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSETNX', KEYS[2], 'title', ARGV[4])
redis.call('HSETNX', KEYS[2], 'create_ms', ARGV[2])
redis.call('HSET', KEYS[2], 'update_ms', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'count', 2)
redis.call('RPUSH', KEYS[3], ARGV[6], ARGV[7])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[8]))
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    title: str
    message_count: int
    create_ms: int
    update_ms: int


@dataclass(frozen=True)
class MessageRecord:
    id: str
    role: str  # "user" | "assistant"
    content: str
    create_ms: int
    model: str = ""
    sources: tuple[Source, ...] = field(default_factory=tuple)
    usage: Usage | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"id": self.id, "role": self.role, "content": self.content,
                                "create_ms": self.create_ms}
        if self.role == "assistant":
            data["model"] = self.model
            data["sources"] = [[s.document, s.filename, s.chunk_index, s.score, s.snippet()]
                               for s in self.sources]
            usage = self.usage or Usage()
            data["usage"] = [usage.prompt_tokens, usage.completion_tokens]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> MessageRecord:
        data = json.loads(raw)
        sources = tuple(Source(d, f, int(i), float(s), t) for d, f, i, s, t
                        in data.get("sources", ()))
        usage = Usage(*data["usage"]) if "usage" in data else None
        return cls(id=data["id"], role=data["role"], content=data["content"],
                   create_ms=int(data["create_ms"]), model=data.get("model", ""),
                   sources=sources, usage=usage)


def new_id() -> str:
    return uuid.uuid4().hex


def _now_ms() -> int:
    return int(time.time() * 1000)


class ConversationStore:
    """A user's conversations: read history, append completed turns, list, delete."""

    def __init__(self, redis: RedisClient, retention_seconds: int) -> None:
        self._redis = redis
        self._retention = retention_seconds
        self._append = redis.register_script(_APPEND)

    async def get(self, user: str, conversation: str) -> ConversationRecord | None:
        fields = text_hash(await self._redis.hgetall(_conversation_key(user, conversation)))
        return _record(conversation, fields) if fields else None

    async def history(self, user: str, conversation: str,
                      turns: int) -> list[HistoryMessage] | None:
        """The last `turns` turns, oldest first; None when the conversation is gone."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(_conversation_key(user, conversation))
            pipe.lrange(_messages_key(user, conversation), -2 * turns, -1)
            exists, raw = await pipe.execute()
        if not exists:
            return None
        if turns == 0:
            return []
        records = [MessageRecord.from_json(item) for item in raw]
        return [HistoryMessage(r.role, r.content) for r in records]

    async def append_turn(self, user: str, conversation: str, *, is_new: bool,
                          question: MessageRecord, answer: MessageRecord) -> bool:
        """Store a completed turn; False when a continued conversation was deleted.
        Idempotent: the same records again (a retry) do not append the turn twice."""
        now = max(question.create_ms, answer.create_ms)
        title = " ".join(question.content.split())[:TITLE_CHARS]
        stored = await self._append(
            keys=[_index_key(user), _conversation_key(user, conversation),
                  _messages_key(user, conversation)],
            args=[conversation, now, self._retention, title, "1" if is_new else "0",
                  question.to_json(), answer.to_json(), self._retention * 1000])
        return bool(stored)

    async def list(self, user: str, size: int, after: tuple[int, str] | None
                   ) -> tuple[list[ConversationRecord], bool]:
        """Conversations by last update, newest first, after (update ms, id); and
        whether more follow."""
        index = _index_key(user)
        await self._redis.zremrangebyscore(index, "-inf", _now_ms() - self._retention * 1000)
        ties: list[tuple[str, float]] = []
        if after is None:
            rest = await self._redis.zrange(index, "+inf", "-inf", desc=True, byscore=True,
                                            offset=0, num=size + 1, withscores=True)
        else:
            score, last_id = after
            same = await self._redis.zrange(index, score, score, desc=True, byscore=True,
                                            withscores=True)
            ties = [(member, s) for member, s in scored_members(same) if member < last_id]
            rest = await self._redis.zrange(index, f"({score}", "-inf", desc=True,
                                            byscore=True, offset=0, num=size + 1,
                                            withscores=True)
        ids = [member for member, _ in [*ties, *scored_members(rest)]][:size + 1]
        async with self._redis.pipeline(transaction=False) as pipe:
            for conversation in ids:
                pipe.hgetall(_conversation_key(user, conversation))
            found = await pipe.execute()
        records = [_record(c, f) for c, f in zip(ids, found, strict=True) if f]
        return records[:size], len(ids) > size

    # builtins.list: in this class, `list` is the method above.
    async def messages(self, user: str, conversation: str, offset: int,
                       size: int) -> tuple[builtins.list[MessageRecord], bool] | None:
        """Messages oldest first from `offset`; None when the conversation is gone."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(_conversation_key(user, conversation))
            pipe.lrange(_messages_key(user, conversation), offset, offset + size)
            exists, raw = await pipe.execute()
        if not exists:
            return None
        records = [MessageRecord.from_json(item) for item in raw]
        return records[:size], len(records) > size

    async def delete(self, user: str, conversation: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_conversation_key(user, conversation), _messages_key(user, conversation))
            pipe.zrem(_index_key(user), conversation)
            deleted, _ = await pipe.execute()
        return bool(deleted)


def _record(conversation: str, fields: dict[str, str]) -> ConversationRecord:
    return ConversationRecord(id=conversation, title=fields.get("title", ""),
                              message_count=int(fields.get("count", 0)),
                              create_ms=int(fields.get("create_ms", 0)),
                              update_ms=int(fields.get("update_ms", 0)))


def _index_key(user: str) -> str:
    return f"chat:{{{user}}}:convs"


def _conversation_key(user: str, conversation: str) -> str:
    return f"chat:{{{user}}}:conv:{conversation}"


def _messages_key(user: str, conversation: str) -> str:
    return f"chat:{{{user}}}:conv:{conversation}:msgs"
