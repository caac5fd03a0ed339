"""Why a dataset got a new version although the store holds one of the same name.

A dataset version is the hash of its valid rows, so a new version of a dataset the store already
holds means its rows changed: another source (a file edited, another ``n``), or other dataset code
(``tasks/data``: the demo's rendering, a reader's rules). Every model is then extracted again over
it, with a plain "to extract" (``tasks.why_extract`` compares features over the same dataset
only). The dataset stage says why instead, from the stored version of that name closest to the
run. Not part of the dataset code: this module only reads manifests.
"""

from __future__ import annotations

from typing import Any

from storage import layout
from storage.store import Store
from tasks.version_reasons import closest, differing_fields, published_words, stored_manifests


def why_new_dataset(store: Store, catalog: dict[str, Any]) -> str | None:
    """Why the dataset whose new version's catalog entry is ``catalog`` (``name``, ``dataset_version``,
    ``source``, ``code_version``) differs from the stored versions of that name: the closest one
    (fewest differences; the newest among equals), whether its dataset code differs and which of
    its source's fields do; its rows alone where neither does (the file itself changed). None when
    the store holds no other version of that name. Damaged manifests are passed over."""
    stored = [manifest for manifest in stored_manifests(store, layout.DATASETS, "dataset", "catalog")
              if manifest["catalog"].get("name") == catalog["name"]
              and manifest["catalog"].get("dataset_version") != catalog["dataset_version"]]
    if not stored:
        return None
    source = catalog.get("source") if isinstance(catalog.get("source"), dict) else {}

    def differences(manifest: dict[str, Any]) -> tuple[bool, list[str]]:
        other = manifest["catalog"]
        return other.get("code_version") != catalog.get("code_version"), differing_fields(other.get("source"), source)

    nearest = closest(stored, differences)
    other_code, fields = differences(nearest)
    reasons = []
    if other_code:
        reasons.append(f"is of other dataset code (code version {nearest['catalog'].get('code_version')}, "
                       f"now {catalog.get('code_version')})")
    if fields:
        reasons.append(f"was read with another {', '.join(fields)}")
    if not reasons:
        reasons.append("has the same source settings and code: the source's rows themselves changed")
    return (f"the store's version {nearest['catalog'].get('dataset_version')} of {catalog['name']!r} "
            f"({published_words(nearest)}) " + " and ".join(reasons))
