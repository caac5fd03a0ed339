"""flows.run_store: which store URLs a run may publish into (the flows' tests run them in flows)."""

import pytest

from flows.run_store import check_run_store_url, run_store


@pytest.mark.parametrize("url", ["memory://prh", "MEMORY://prh", "memory:///x", "simplecache::memory://prh",
                                 "simplecache:: memory://prh"])
def test_a_store_held_in_the_process_memory_is_refused_in_any_case_and_link(url):
    with pytest.raises(ValueError, match="is held in the memory of the process that runs the flow"):
        check_run_store_url(url)


@pytest.mark.parametrize("url", ["s3://bucket/prh", "file:///data/prh", "data/prh", "./memory", "memory", "my-memory://x",
                                 "simplecache::s3://bucket/prh", "data/memory:/x"])
def test_stores_that_keep_what_a_run_publishes_pass(url):
    check_run_store_url(url)  # no I/O: nothing is created


def test_a_protocol_that_needs_more_than_a_url_names_the_store(tmp_path):
    with pytest.raises(ValueError, match=r"^store github://a/b: cannot open it as a store: .*a store is a folder") as refused:
        run_store("github://a/b")
    assert refused.value.__cause__ is None  # one line naming the store, not fsspec's TypeError chained
    assert run_store(str(tmp_path / "s")).root == str(tmp_path / "s")
