"""The chain of an exception and the errors it was raised from, as the checks that name a cause
(an S3 error inside s3fs's ``OSError``, a full disk under a library's error, a network hiccup
worth a retry) walk it."""

from __future__ import annotations

from typing import Iterator

#: How many links of a chain are followed: enough for a library's wrappers, finite for a cycle.
MAX_CHAIN = 8


def error_chain(error: BaseException | None, keep_cut: bool = False) -> Iterator[BaseException]:
    """``error``, then the error it was raised from (``__cause__``: ``raise ... from cause``) or
    while handling (``__context__``), and so on: at most :data:`MAX_CHAIN` errors. With
    ``keep_cut``, the chain ends where its raiser cut it (``raise ... from None``): an error that
    says "offline and not cached" is final even though a connection error led to it."""
    found, depth = error, 0
    while found is not None and depth < MAX_CHAIN:
        yield found
        cut = keep_cut and found.__suppress_context__
        found, depth = found.__cause__ or (None if cut else found.__context__), depth + 1
