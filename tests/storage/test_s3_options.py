"""Reading an S3 client error (storage.s3_options): which replies show an endpoint that is no S3
server. The errors are botocore's own ``ClientError`` as botocore builds it for a reply without
an S3 error document (the HTTP status taken for the code); tests/storage/test_s3_faults.py has a
real web server answer."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from storage.s3_options import not_s3_reply


def reply_without_s3_document(status: int, reason: str, operation: str = "ListObjectsV2") -> ClientError:
    """The error botocore raises for an HTTP ``status`` reply whose body names no S3 error code."""
    return ClientError({"Error": {"Code": str(status), "Message": reason},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize(("status", "reason"), [(400, "Bad Request"), (404, "Not Found"), (499, ""), (501, "Not Implemented")])
def test_a_client_error_or_501_without_an_s3_error_document_is_no_s3_servers(status: int, reason: str) -> None:
    said = not_s3_reply(reply_without_s3_document(status, reason))
    assert said is not None and said.startswith(f"ListObjectsV2 answered HTTP {status}")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_bare_5xx_other_than_501_may_be_a_gateway_and_is_not_taken_for_one(status: int) -> None:
    assert not_s3_reply(reply_without_s3_document(status, "Bad Gateway")) is None


def test_an_s3_error_code_or_a_head_request_is_not_taken_for_a_web_servers_reply() -> None:
    """A HEAD reply never has a body, so its bare status says nothing; a reply naming an S3 error
    code comes from an S3 server."""
    assert not_s3_reply(reply_without_s3_document(404, "Not Found", operation="HeadObject")) is None
    s3_server = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"},
                             "ResponseMetadata": {"HTTPStatusCode": 404}}, "ListObjectsV2")
    assert not_s3_reply(s3_server) is None
    assert not_s3_reply(ValueError("not a reply")) is None


def test_an_option_the_installed_s3fs_lacks_is_named_with_the_s3fs_that_takes_it(s3_store_url) -> None:
    """``local_expiry_check`` (for servers refusing ``If-Match``) is s3fs 2026.3's; an older s3fs
    (pyproject admits 2024.12) handed it on to aiobotocore's session and the first request failed
    with ``TypeError: AioSession.__init__() got an unexpected keyword argument``. The store says
    which s3fs takes it as it opens."""
    import inspect

    import s3fs

    from storage.s3_options import option_s3fs_lacks
    from storage.store import Store

    class OlderS3(s3fs.S3FileSystem):
        def __init__(self, *args, **kwargs):  # 2024.12 to 2026.2: other options go to aiobotocore
            super().__init__(*args, **kwargs)

    said = option_s3fs_lacks({"local_expiry_check": True, "anon": False}, OlderS3)
    assert said is not None and said.startswith("storage option local_expiry_check needs s3fs 2026.3 or newer"), said
    assert f"s3fs ({s3fs.__version__})" in said
    assert option_s3fs_lacks({"anon": False, "endpoint_url": "http://x"}, OlderS3) is None
    assert option_s3fs_lacks({"local_expiry_check": True}, s3fs.S3FileSystem) is None or \
        "local_expiry_check" not in inspect.signature(s3fs.S3FileSystem.__init__).parameters
    options = {"local_expiry_check": True, "skip_instance_cache": True}
    if "local_expiry_check" in inspect.signature(s3fs.S3FileSystem.__init__).parameters:
        assert Store(s3_store_url, options).exists("none") is False
    else:  # the oldest s3fs pyproject admits
        with pytest.raises(ValueError, match=r"storage option local_expiry_check needs s3fs 2026\.3 or newer"):
            Store(s3_store_url, options)
