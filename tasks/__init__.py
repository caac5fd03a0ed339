"""The pipeline's work: datasets, extraction, the alignment engine, reports (see DESIGN.md).

Importing any of it first makes Pillow refuse PostScript images in this process
(`tasks.pillow_policy`): dataset images are decoded, never run. It also keeps prh's code as this
process imports it (`storage.loaded_code`, standard library only): version ids name that code, not
what an upgrade in place puts on disk later.
"""

from tasks.pillow_policy import refuse_postscript

try:
    from storage.loaded_code import snapshot
except ImportError:  # another `storage` first on sys.path (a notebook's storage.py): versions read the disk
    pass
else:
    snapshot()
refuse_postscript()
