"""What Pillow may do with image bytes from a dataset: decode them, never run them.

Pillow identifies an image by its content, not its name, and decodes Encapsulated PostScript
(EPS) by handing the file to Ghostscript (``gs -dSAFER ...``) when ``gs`` is on ``PATH``: a
"photo" that is really a PostScript program (named ``cat.png`` in a scraped table) was run by an
interpreter whose ``-dSAFER`` sandbox has had escapes (CVE-2023-36664, CVE-2024-29510), both when
the dataset was checked and again at each extraction and report. `refuse_postscript` stops that
for the whole process: such an image is refused with `POSTSCRIPT_REFUSED` (``image_unreadable``),
and ``gs`` is never started, not even to ask its version.

It runs when the ``tasks`` package is imported (``tasks/__init__.py``): every decoder of dataset
images (the dataset checks, extraction and its worker processes, hub datasets, the report's
thumbnails) lives under it. It lives outside ``tasks/data`` and ``tasks/extract`` on purpose:
their source is part of the dataset recipe's and the features' code versions
(``tasks.extract_task.FEATURE_CODE``), and this changes no pixel of any image that can be read,
so it must not re-render the demo or re-extract stored features.
"""

from __future__ import annotations

from typing import Any, NoReturn

#: The reason an EPS image is not decoded (the ``detail`` of its rejection).
POSTSCRIPT_REFUSED = ("a PostScript (EPS) image is not read: decoding it runs the file's program in Ghostscript; "
                      "convert it to PNG or JPEG")


def _refused(*args: Any, **kwargs: Any) -> NoReturn:
    raise OSError(POSTSCRIPT_REFUSED)


def refuse_postscript() -> None:
    """Make Pillow refuse to decode EPS in this process (idempotent): its Ghostscript call raises
    ``OSError(POSTSCRIPT_REFUSED)`` and ``gs`` counts as not installed."""
    from PIL import EpsImagePlugin

    EpsImagePlugin.Ghostscript = _refused  # type: ignore[assignment]  # what EpsImageFile.load calls
    EpsImagePlugin.gs_binary = False  # has_ghostscript(): never run `gs --version`
