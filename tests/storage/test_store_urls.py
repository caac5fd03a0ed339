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
