"""The store, versions and the DuckDB catalog (see DESIGN.md).

Importing it first keeps prh's code as this process imports it (``storage.loaded_code``): version
ids name that code, not what an upgrade in place puts on disk later.
"""

from storage.loaded_code import snapshot

snapshot()
