"""The private Prefect APIs prh relies on (``flows.prefect_private``) exist in the installed
Prefect: a new pin that drops one fails here, naming it and what prh uses it for."""

from __future__ import annotations

from flows import prefect_private


def test_the_private_prefect_apis_prh_relies_on_exist():
    assert prefect_private.missing() == [], (f"Prefect {prefect_private.prefect_version()} lacks private APIs prh uses: "
                                             f"{prefect_private.missing()}")


def test_a_private_api_that_is_gone_is_named(monkeypatch):
    """The check itself: an attribute no class has, an attribute ``__init__`` sets (found), a module
    that does not exist."""
    monkeypatch.setattr(prefect_private, "PRIVATE_APIS", (
        ("prefect.server.api.server", "SubprocessASGIServer", "_launch_renamed", "watchdog"),
        ("prefect.server.api.server", "SubprocessASGIServer", "server_process", "set by __init__"),
        ("prefect.server.no_such_module", None, None, "leases"),
    ))
    assert prefect_private.missing() == ["prefect.server.api.server.SubprocessASGIServer._launch_renamed: watchdog",
                                         "prefect.server.no_such_module: leases"]
