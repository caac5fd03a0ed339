"""Store URLs as strings: credentials removed before a URL is shown, glob characters escaped.
(What ``Store`` makes of a URL, refusals included, is tested through it in ``test_store.py``.)"""

import pytest

from storage.store_urls import escape_glob, escaped_literal, redact_url


def test_redact_url_strips_credentials():
    assert redact_url("s3://AKIA:secret@bucket/prefix") == "s3://bucket/prefix"
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"


@pytest.mark.parametrize("pattern, literal", [
    ("s3://b/runs [[]v1][*][?]/a.parquet", "s3://b/runs [v1]*?/a.parquet"), ("plain/a.parquet", "plain/a.parquet"),
    ("x/[[]]", "x/[]"), ("x/*.parquet", None), ("x/[ab].parquet", None), ("x/[[?]", None), ("x/[*]/?", None),
    ("x/**/a", None), ("x/[!a]", None),
])
def test_escaped_literal(pattern, literal):
    assert escaped_literal(pattern) == literal


@pytest.mark.parametrize("path", ["s3://b/runs [v1]*?/a.parquet", "x/[]]", "x/[[[", "a?b*c[d]", "plain"])
def test_escaped_literal_inverts_escape_glob(path):
    assert escaped_literal(escape_glob(path)) == path


@pytest.mark.parametrize("url, shown", [
    # every link of a chained URL: fsspec passes each its own URL, and each may hold credentials
    ("simplecache::s3://AKIA:UrlSecret77zz@bucket/x", "simplecache::s3://bucket/x"),
    ("simplecache::memory://user:UrlSecret77zz@host/x", "simplecache::memory://host/x"),
    ("s3://bucket/x::ftp://user:UrlSecret77zz@host:21/y", "s3://bucket/x::ftp://host:21/y"),
    ("memory://host::s3://KEY:UrlSecret77zz@bucket/x", "memory://host::s3://bucket/x"),
    ("s3://KEY:Url::Secret77zz@bucket/x", "s3://bucket/x"),  # '::' inside a password: not a link's end
    # what urlsplit refuses or cannot parse is still shown, without its credentials
    ("memory://user:UrlSecret77zz@host:port/x", "memory://host:port/x"),
    ("s3://user:UrlSecret77zz@[bucket/x", "s3://[bucket/x"),
    ("s3://[bucket/x", "s3://[bucket/x"),
    # as written otherwise: the host's case, an IPv6 literal, an '@' in the path, a local path with '::'
    ("s3://KEY:UrlSecret77zz@MyBucket/x", "s3://MyBucket/x"),
    ("http://user:UrlSecret77zz@[::1]:9000/", "http://[::1]:9000/"),
    ("http://[::1]:9000", "http://[::1]:9000"),
    ("s3://bucket/a@b/c", "s3://bucket/a@b/c"),
    ("data/store::x", "data/store::x"),
    ("s3://bucket/x?version=a@b", "s3://bucket/x?version=a@b"),
    # a secret holding '/' (half of AWS's): the authority ends inside it; a bucket name holds no ':'
    ("s3://AKIA:Url/Secret77zz+@bucket/x", "s3://bucket/x"),
    ("simplecache::S3://AKIA:Url/Secret77zz@bucket/x", "simplecache::S3://bucket/x"),
    ("gs://KEY:a/b/Secret77zz@bucket/x::s3://other/y", "gs://bucket/x::s3://other/y"),
    ("s3://AKIA:Url://Secret77zz@bucket/x", "s3://bucket/x"),  # a '://' inside it: the key and half the secret were shown
    ("s3://bucket/a:b@c/d", "s3://bucket/a:b@c/d"),
    ("memory://host/a:b@c", "memory://host/a:b@c"),
])
def test_redact_url_strips_credentials_from_every_part_and_never_raises(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("url, meant", [("s4://bucket/x", "s3://bucket/x"), ("fil:///tmp/x", "file:///tmp/x"),
                                        ("S3://b", "s3://b"), ("nosuch://bucket/x", None)])
def test_a_misspelt_scheme_is_answered_with_the_one_meant(url, meant) -> None:
    """fsspec's ``Protocol not known: s4`` alone named no fix."""
    from storage.store import Store

    with pytest.raises(ValueError) as refused:
        Store(url)
    message = str(refused.value)
    assert message.startswith(f"store {url}: cannot open it: Protocol not known")
    assert message.endswith("a store is file:///ABSOLUTE/PATH or a folder's path, or s3://BUCKET/PREFIX)")
    assert (f"did you mean {meant}?" in message) if meant else ("did you mean" not in message)


def test_a_credential_in_a_misspelt_url_stays_hidden() -> None:
    from storage.store import Store

    with pytest.raises(ValueError) as refused:
        Store("s4://AKIAKEY:secret@bucket/x")
    assert "secret" not in str(refused.value) and "did you mean s3://" in str(refused.value)
