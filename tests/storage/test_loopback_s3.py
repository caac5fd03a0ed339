"""storage.loopback_s3: the moto server binds its own port and its log never blocks it."""

from __future__ import annotations

import boto3

from storage.loopback_s3 import start_moto_server, stop_server


def test_servers_bind_their_own_ports_and_a_long_log_does_not_block_them():
    """Two servers started at once listen on different ports (each chose its own: no window in
    which another process could take a port picked for it); 200 requests with 1,000-character keys
    log ~220 KB, more than a pipe holds (64 KB), and are all answered."""
    (a, url_a), (b, url_b) = start_moto_server(), start_moto_server()
    try:
        assert url_a != url_b
        s3 = boto3.client("s3", endpoint_url=url_a, aws_access_key_id="k", aws_secret_access_key="s",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="prh-loopback")
        for i in range(200):
            s3.put_object(Bucket="prh-loopback", Key=f"{i:03d}-" + "k" * 996, Body=b"x")
        assert s3.list_objects_v2(Bucket="prh-loopback")["KeyCount"] == 200
    finally:
        stop_server(a)
        stop_server(b)
    assert a.returncode is not None and b.returncode is not None
