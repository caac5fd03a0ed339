"""The chain of an exception and the errors it was raised from."""

from __future__ import annotations

from storage.error_chain import MAX_CHAIN, error_chain


def _raised(make):
    try:
        make()
    except BaseException as error:  # noqa: BLE001 - the error under test
        return error
    raise AssertionError("nothing raised")


def _from_cause() -> None:
    try:
        raise ConnectionError("reset")
    except ConnectionError as cause:
        raise OSError("upload failed") from cause


def _while_handling() -> None:
    try:
        raise KeyError("inner")
    except KeyError:
        raise RuntimeError("outer")  # noqa: B904 - an implicit context, as libraries leave it


def _cut() -> None:
    try:
        raise ConnectionError("reset")
    except ConnectionError:
        raise ValueError("offline and not cached") from None


def test_the_chain_follows_causes_and_contexts_in_order():
    assert [type(e) for e in error_chain(_raised(_from_cause))] == [OSError, ConnectionError]
    assert [type(e) for e in error_chain(_raised(_while_handling))] == [RuntimeError, KeyError]
    assert list(error_chain(None)) == []


def test_a_cut_chain_ends_there_only_when_asked():
    cut = _raised(_cut)
    assert [type(e) for e in error_chain(cut)] == [ValueError, ConnectionError]
    assert [type(e) for e in error_chain(cut, keep_cut=True)] == [ValueError]
    assert [type(e) for e in error_chain(_raised(_from_cause), keep_cut=True)] == [OSError, ConnectionError]


def test_a_cycle_or_a_long_chain_stops_after_the_limit():
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first  # a cycle, as a hand-made chain can be
    assert len(list(error_chain(first))) == MAX_CHAIN == 8
    errors = [ValueError(str(i)) for i in range(20)]
    for error, cause in zip(errors, errors[1:]):
        error.__cause__ = cause
    assert [str(e) for e in error_chain(errors[0])] == [str(i) for i in range(MAX_CHAIN)]
