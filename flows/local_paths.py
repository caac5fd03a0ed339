"""Where prh keeps its local state when nothing says where: the store and Prefect's home.

prh run from its source tree (a clone, ``make``'s editable install) keeps them in that checkout:
``store/`` and ``.prefect/`` beside ``pyproject.toml``. An installed prh (``pip install`` of the
wheel: the packages in ``site-packages``) has no checkout, and its package folder is no place for
data (it may be read-only, is shared by every user of that Python, and an upgrade or uninstall
would leave the data behind): it keeps them in the user's data folder instead,
``$XDG_DATA_HOME/prh`` (else ``~/.local/share/prh``). ``--store``, ``$PRH_STORE`` and
``$PREFECT_HOME`` still choose another place. Light: imports nothing beyond the standard library.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Mapping

#: the folder holding prh's packages (flows/, tasks/, storage/): a checkout, or site-packages
PACKAGES_ROOT = Path(__file__).resolve().parent.parent

#: the distribution name a checkout's pyproject.toml declares
PROJECT_NAME = "prh"


def checkout_root(root: Path = PACKAGES_ROOT) -> Path | None:
    """``root`` where it is prh's source tree (it holds a ``pyproject.toml`` whose project is
    ``prh``), else None: an installed copy, whose packages lie in ``site-packages`` beside other
    distributions'."""
    try:
        with open(root / "pyproject.toml", "rb") as file:
            project = tomllib.load(file).get("project")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if isinstance(project, dict) and project.get("name") == PROJECT_NAME else None


def user_data_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/prh``, else ``~/.local/share/prh`` (a relative or empty ``$XDG_DATA_HOME``
    is ignored, as the XDG base directory specification says)."""
    value = (os.environ if environ is None else environ).get("XDG_DATA_HOME", "")
    base = Path(value) if value and os.path.isabs(value) else Path.home() / ".local" / "share"
    return base / PROJECT_NAME


def local_root(root: Path = PACKAGES_ROOT, environ: Mapping[str, str] | None = None) -> Path:
    """Where the default store and Prefect home lie: the checkout (:func:`checkout_root`), else
    the user's data folder (:func:`user_data_root`)."""
    return checkout_root(root) or user_data_root(environ)


def default_store_path(root: Path = PACKAGES_ROOT, environ: Mapping[str, str] | None = None) -> str:
    """The store without ``--store`` and ``$PRH_STORE``: ``store/`` of the checkout, or of the
    user's data folder for an installed prh."""
    return str(local_root(root, environ) / "store")


def default_store_shown(root: Path = PACKAGES_ROOT, environ: Mapping[str, str] | None = None) -> str:
    """:func:`default_store_path` as help and error texts name it: ``store/ of this checkout``, or
    the data folder's path."""
    return "store/ of this checkout" if checkout_root(root) else default_store_path(root, environ)


def default_prefect_home(root: Path = PACKAGES_ROOT, environ: Mapping[str, str] | None = None) -> str:
    """Prefect's home without ``$PREFECT_HOME``: ``.prefect`` of the checkout, or of the user's
    data folder for an installed prh."""
    return str(local_root(root, environ) / ".prefect")
