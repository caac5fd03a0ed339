"""The folders prh's extraction takes from the environment expand ``~`` as a shell would not when
the value is quoted (``PRH_MODEL_CACHE="~/models"``): a literal ``~`` folder had been created in
the working directory."""

from __future__ import annotations

import pytest

from tasks.extract import hf_models, sources, split_zip


@pytest.mark.parametrize("variable, where", [("PRH_MODEL_CACHE", lambda: split_zip.cache_root()),
                                             ("PRH_OFFLOAD_DIR", lambda: hf_models.offload_dir()),
                                             ("PRH_DIGEST_CACHE", lambda: sources.digest_cache_path())])
def test_a_folder_given_with_a_tilde_is_under_the_home(variable, where, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, "~/prh-place")
    assert where() == tmp_path / "home" / "prh-place"
    assert not (tmp_path / "~").exists()
