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
