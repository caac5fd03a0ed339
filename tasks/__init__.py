"""The pipeline's work: datasets, extraction, the alignment engine, reports (see DESIGN.md).

Importing any of it first makes Pillow refuse PostScript images in this process
(`tasks.pillow_policy`): dataset images are decoded, never run.
"""

from tasks.pillow_policy import refuse_postscript

refuse_postscript()
