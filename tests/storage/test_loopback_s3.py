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


def test_the_wait_for_the_server_does_not_end_when_the_wall_clock_steps(monkeypatch):
    """The wait for the server to listen is timed on a monotonic clock: a wall clock stepped an
    hour forward meanwhile (NTP, a suspended VM resumed) had ended it at once ("moto_server did
    not start") while the server came up half a second later; one stepped back had made it wait
    an hour longer for a server that never came. A stand-in process says it listens after 0.5 s
    on a socket the test holds."""
    import socket
    import time

    import storage.loopback_s3 as loopback

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def log():
        time.sleep(0.5)
        yield f" * Running on http://127.0.0.1:{port}\n"

    class Server:
        stderr = log()
        killed = False

        def __init__(self, *args, **kwargs):
            pass

        def poll(self):
            return None

        def kill(self):
            Server.killed = True

    real_time, calls = time.time, []

    def stepped():
        calls.append(1)
        return real_time() + (3600.0 if len(calls) > 1 else 0.0)

    monkeypatch.setattr(loopback.subprocess, "Popen", Server)
    monkeypatch.setattr(time, "time", stepped)
    try:
        proc, url = loopback.start_moto_server(timeout_s=30)
    finally:
        monkeypatch.undo()
        listener.close()
    assert url == f"http://127.0.0.1:{port}" and isinstance(proc, Server) and not Server.killed
