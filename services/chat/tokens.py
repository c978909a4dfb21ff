"""Token counts made locally, with no network and no tokenizer download.

Byte-level BPE tokenizers (OpenAI's, Llama's) average about four bytes of English
per token and never more than one token per byte. `estimate_prompt_tokens` leans
high (three bytes per token) because it sizes a quota hold; `count_tokens` is the
ordinary rule of thumb, used to charge providers that report no usage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per chat message
REPLY_PRIMER_TOKENS = 3


def count_tokens(text: str) -> int:
    """A local count of `text`'s tokens (about four bytes each, at least one)."""
    if not text:
        return 0
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def tokens_in_bytes(size: int) -> int:
    """The local count of a text of `size` UTF-8 bytes (`count_tokens` of that text)."""
    return math.ceil(size / 4) if size > 0 else 0


def estimate_prompt_tokens(contents: Iterable[str]) -> int:
    """A generous estimate of a prompt's tokens, for reserving quota."""
    total = REPLY_PRIMER_TOKENS
    for content in contents:
        total += math.ceil(len(content.encode("utf-8")) / 3) + MESSAGE_OVERHEAD_TOKENS
    return total


def count_prompt_tokens(contents: Iterable[str]) -> int:
    """A local count of a prompt's tokens, for charging when the provider gives none."""
    return REPLY_PRIMER_TOKENS + sum(count_tokens(c) + MESSAGE_OVERHEAD_TOKENS
                                     for c in contents)
