"""The Prefect that ``prh run`` will use, checked before anything starts, and its failures put
in one line.

A server named by ``PREFECT_API_URL`` must answer; without one, the folder of the SQLite database
of Prefect's temporary API server (``PREFECT_HOME/prefect.db`` by default; ``PREFECT_HOME`` is
``.prefect`` of this checkout, the disk of the default store) must take writes and have room.

Without these checks a ``PREFECT_API_URL`` that is not a URL, or names a server that is down,
ended ``prh run`` with a traceback (``RuntimeError: Failed to reach API``, exit 1: the code of
"some models failed"); a ``PREFECT_HOME`` that cannot be written (under a file, on a read-only
disk) or on a full disk restarted the temporary server for 3 minutes, printing thousands of lines
of its tracebacks, before ``Timed out while attempting to connect to ephemeral Prefect API
server``; and a disk that filled up mid-run ended it with a raw ``PrefectHTTPStatusError: Server
error '500 Internal Server Error'`` (:func:`prefect_out_of_room` names the cause now).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from storage.error_chain import error_chain

#: A Prefect API failure with less room than this beside the server's database is put down to it.
LOW_ROOM_MB = 16.0
#: How the ``UserWarning`` starts that Prefect gives, once, when its settings are first read
#: (``prefect.context`` imported) and ``PREFECT_HOME`` does not exist and cannot be created.
HOME_NOT_CREATED = "Failed to create the Prefect home directory at "


def prefect_home(default: str, environ: Mapping[str, str] | None = None) -> str:
    """``$PREFECT_HOME`` of ``environ`` (default ``os.environ``), or ``default`` where it is unset,
    empty or only blanks: Prefect reads an empty ``PREFECT_HOME`` as ``.``, so that ``make serve``
    and ``prh run`` had put the server's database, logs and lock in whatever folder they were
    started from. Every place of prh that reads the variable reads it through this."""
    value = (os.environ if environ is None else environ).get("PREFECT_HOME", "")
    return value if value.strip() else default


#: Prefect's variables of its console formatter (``formatters.standard`` of its ``logging.yml``):
#: the formatter's class (Prefect names the key ``()``, which its variable name spells as a
#: trailing ``_``) and its three line formats, the time first (``%(asctime)s``: the date-time in UTC
#: to the millisecond, ``flows.log_format.UtcFormatter``), the rest as Prefect writes them.
UTC_LOG_FORMAT = {
    "PREFECT_LOGGING_FORMATTERS_STANDARD_": "flows.log_format.UtcFormatter",
    "PREFECT_LOGGING_FORMATTERS_STANDARD_FORMAT": "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s",
    "PREFECT_LOGGING_FORMATTERS_STANDARD_FLOW_RUN_FMT":
        "%(asctime)s | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
    "PREFECT_LOGGING_FORMATTERS_STANDARD_TASK_RUN_FMT":
        "%(asctime)s | %(levelname)-7s | Task run %(task_run_name)r - %(message)s",
}
#: Variables that give Prefect a logging configuration file of one's own (its whole configuration):
#: prh then leaves the format to it.
LOGGING_FILE_VARIABLES = ("PREFECT_LOGGING_SETTINGS_PATH", "PREFECT_LOGGING_CONFIG_PATH")


def logging_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``PREFECT_LOGGING_*`` variables prh adds to the environment ``environ`` (default
    ``os.environ``; its ``PREFECT_HOME`` already settled) of a Prefect process it starts, those
    ``environ`` lacks:

    - the console lines' time in UTC with its date (:data:`UTC_LOG_FORMAT`:
      ``2026-03-04T02:00:01.234Z | INFO    | Flow run 'calm-fox' - ...``; Prefect's own reads
      ``02:00:01.234``, the local time of day), unless ``environ`` configures Prefect's console
      format itself: a logging file of its own (:data:`LOGGING_FILE_VARIABLES`, or
      ``logging.yml`` in ``PREFECT_HOME``, which Prefect reads instead of its own) or any
      ``PREFECT_LOGGING_FORMATTERS_STANDARD_*`` variable;
    - ``PREFECT_LOGGING_COLORS=false`` where ``NO_COLOR`` or ``FORCE_COLOR=0`` asks for output
      without escape codes (``flows.cli_console.plain_output``): Prefect's console handler
      coloured its lines whatever they said (``rich`` drops only colours under ``NO_COLOR`` and
      reads ``FORCE_COLOR=0`` as "force")."""
    from flows.cli_console import plain_output  # light: rich is imported only to print

    environ = os.environ if environ is None else environ
    added: dict[str, str] = {}
    home = environ.get("PREFECT_HOME", "").strip() or "~/.prefect"  # Prefect's default home
    own_file = (any(environ.get(name, "").strip() for name in LOGGING_FILE_VARIABLES)
                or (Path(home).expanduser() / "logging.yml").exists())
    own_format = any(name.startswith("PREFECT_LOGGING_FORMATTERS_STANDARD_") for name in environ)
    if not own_file and not own_format:
        added.update(UTC_LOG_FORMAT)
    if plain_output(environ) and "PREFECT_LOGGING_COLORS" not in environ:
        added["PREFECT_LOGGING_COLORS"] = "false"
    return added


def shell_exports(environ: Mapping[str, str] | None = None) -> str:
    """:func:`logging_environment` as ``export NAME=value`` lines for a POSIX shell, for a Prefect
    worker started by hand: ``eval "$(python -m flows.prefect_env)"``."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in logging_environment(environ).items())


@contextlib.contextmanager
def home_warning_held() -> Iterator[None]:
    """Inside the block, Prefect's warning that it could not create ``PREFECT_HOME``
    (:data:`HOME_NOT_CREATED`, two lines on stderr) is held back; every other warning is shown as
    usual. A block that raises :class:`PrefectHomeError` drops it: there prh's own one line
    (:func:`check_prefect_home`) names the home, the reason and what to do. A block that ends
    normally, or raises anything else (a ``PREFECT_API_URL`` no server answers at, a bad
    ``PRH_TASK_RUNNER``: their lines say nothing of the home), gives it then, as Prefect would
    have (the run goes on without that home: a ``PREFECT_API_URL`` server, a database kept
    elsewhere); it had been dropped with any error, so that the home's problem showed only once
    the other was fixed. Not for threads: it swaps ``warnings.showwarning`` for the block's time."""
    held: list[tuple[tuple[Any, ...], dict[str, Any]]] = []  # showwarning's arguments
    try:
        with warnings.catch_warnings():  # puts showwarning (and the filters) back at the end
            shown = warnings.showwarning

            def hold(message: Warning | str, category: type[Warning], *where: Any, **more: Any) -> None:
                if issubclass(category, UserWarning) and str(message).startswith(HOME_NOT_CREATED):
                    held.append(((message, category, *where), more))
                else:
                    shown(message, category, *where, **more)

            warnings.showwarning = hold
            yield
    except PrefectHomeError:  # prh's line names the home
        held.clear()
        raise
    finally:
        for args, more in held:
            warnings.showwarning(*args, **more)


class PrefectHomeError(ValueError):
    """The folder of the temporary server's database (``PREFECT_HOME``) cannot be written or has
    too little room (:func:`check_prefect_home`); its message says so in one line."""


def check_prefect_environment(min_free_mb: float) -> None:
    """``ValueError`` naming the variable when ``PREFECT_API_URL`` is set and its server does not
    answer Prefect's health check (:func:`check_api_url`), or, without it, when the folder of the
    temporary server's database cannot take a file or has less than ``min_free_mb`` MiB free
    (:func:`check_prefect_home`)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        check_api_url(str(settings.api.url))
        return
    database = temporary_server_database()
    if database is not None:
        check_prefect_home(database.parent, min_free_mb, Path(settings.home).expanduser())


def check_api_url(url: str) -> None:
    """``ValueError`` naming ``PREFECT_API_URL`` and the reason when Prefect's client gets no
    answer from its health endpoint (the check Prefect's engine makes when a flow starts; a
    refused connection is answered within 2 s)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ValueError(f"PREFECT_API_URL={url!r}: Prefect's API does not answer there "
                         f"({type(problem).__name__}: {problem}); start that server (make serve), correct the URL, "
                         "or unset PREFECT_API_URL for a temporary server of this run") from None


def temporary_server_database() -> Path | None:
    """The SQLite file of the temporary API server a flow run starts, or None when runs go to a
    server elsewhere (``PREFECT_API_URL``) or the database is no local file (PostgreSQL,
    ``:memory:``)."""
    from prefect.settings import get_current_settings
    from sqlalchemy.engine import make_url

    settings = get_current_settings()
    if settings.api.url:
        return None
    secret = settings.server.database.connection_url
    try:
        url = make_url(secret.get_secret_value() if secret is not None else "")
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot read is Prefect's to report
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def check_prefect_home(folder: Path, min_free_mb: float, home: Path | None = None) -> None:
    """:class:`PrefectHomeError` (a ``ValueError``) when ``folder`` (of the temporary server's database; ``home``: the
    ``PREFECT_HOME`` it is named as when they are the same) cannot be created, cannot take a file
    (a path under a file, a read-only disk, no permission, no room) or has less than
    ``min_free_mb`` MiB free; the message names the folder, the reason and what to do. A folder
    that does not exist yet is created, as Prefect would; the probe file is removed."""
    where = (f"PREFECT_HOME={str(folder)!r}" if home is None or folder == home
             else f"the folder {str(folder)!r} of Prefect's database (PREFECT_SERVER_DATABASE_CONNECTION_URL)")
    keeps = "Prefect's temporary API server of `prh run` keeps its database there"
    reason = folder_write_problem(folder)
    if reason is not None:
        raise PrefectHomeError(f"{where}: cannot write there ({reason}); {keeps}: point PREFECT_HOME to a folder this user can "
                         "write on a disk with room, or set PREFECT_API_URL to a running Prefect server")
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise PrefectHomeError(f"{where}: {free_mb:.0f} MiB free, less than the {min_free_mb:.0f} MiB a run needs; {keeps}: free "
                         "some space there, point PREFECT_HOME to a folder on a disk with room, or set PRH_MIN_FREE_MB "
                         "to accept less")


def folder_write_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or cannot take a file, in the system's words (``Not a
    directory``: a path under a file; ``Read-only file system``; ``Permission denied``; ``No
    space left on device``), or None when a probe file of 4 KiB was written, synced and removed
    there (``folder`` is created where it did not exist)."""
    try:
        _write_probe(folder)
    except OSError as error:
        return error.strerror or str(error)
    return None


def _write_probe(folder: Path) -> None:
    """Create ``folder`` if needed, then write, sync and remove a small file of its own there."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".prh-probe-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)  # one page: a disk without one is full
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        probe.unlink(missing_ok=True)


def prefect_out_of_room(error: BaseException) -> str | None:
    """One line for ``error`` when it is the Prefect API failing (a Prefect, HTTP or database
    error, or the temporary server that never answered) while the disk of the temporary server's
    database has (almost) no room left; None otherwise."""
    if not _from_prefect(error):
        return None
    database = temporary_server_database()
    if database is None:
        return None
    try:
        free_mb = shutil.disk_usage(database.parent).free / 2**20
    except OSError:
        return None
    if free_mb >= LOW_ROOM_MB:
        return None
    what = (str(error).splitlines() or [""])[0][:300]
    return (f"the Prefect API failed ({type(error).__name__}: {what}) with {free_mb:.1f} MiB left on the disk of its "
            f"temporary server's database {str(database)!r} (PREFECT_HOME): {os.strerror(errno.ENOSPC)}. What the run "
            "published stays in the store (prh verify checks it); free some space there, or point PREFECT_HOME to a "
            "folder on a disk with room, and run again: nothing stored is computed again")


def _from_prefect(error: BaseException) -> bool:
    """Whether ``error`` or an error it was raised from comes from Prefect, its HTTP client or
    its database (or is the temporary server that never answered)."""
    return any(type(found).__module__.split(".")[0] in ("prefect", "httpx", "httpcore", "sqlalchemy", "sqlite3")
               or "Prefect API server" in str(found) for found in error_chain(error))


if __name__ == "__main__":  # eval "$(python -m flows.prefect_env)": prh's logging variables for a worker started by hand
    print(shell_exports(), end="")
