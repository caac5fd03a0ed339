"""Checks of a model spec before any work: does the model exist, is the revision there, can it be reached.

`resolve_access(spec, id, revision)` decides where ``from_pretrained`` reads from:

- ``pkg:<package>/<dir>``: the directory inside the installed package (it must exist);
- ``pkgzip:<prefix>/<dir>``: a zip split over packages, extracted once (`tasks.extract.split_zip`);
- an existing local path: used as is (a ``revision`` is refused: it would be silently ignored);
- a path-like id (``/x``, ``./x``, ``~/x``, ``a/b/c``, backslashes) that does not exist: refused;
- otherwise a Hugging Face hub id, checked with `huggingface_hub.validate_repo_id`, then:
  * hub offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``): it must be in the local cache at
    that revision (``main`` when None); the error lists the cached revisions;
  * else one metadata request (``model_info``, timeout ``PRH_HUB_TIMEOUT`` s, default 10, no
    retries): unknown repo, unknown revision and gated repos are clear errors; when the hub
    cannot be reached (no network: ~0.1 s here) the local cache is used with
    ``local_files_only=True`` — so ``from_pretrained`` never spends ~25 s in its retry loop —
    and a model that is not cached is a clear error.

`upstream_commit(spec)` asks the hub where an unpinned revision points now (one metadata request,
never an error), so that a run reusing stored features can say that the weights moved on.

`known_problem(spec)` tells, from the config class alone, what is known to fail only after the
weights load (a model type that does not pool per token, a read-only config key), and
`remote_code_problem(spec)` a checkpoint whose custom code needs ``trust_remote_code``.
`refuse_known_problem(spec, check)` runs a model check behind `known_problem`:
``tasks.extract.check_model`` and ``load_extractor`` both go through it, so every public entry point
refuses such a model by name. (``cls`` pooling without a CLS token is the model check's own:
``hf_models.cls_pooling_problem``.)

Every error is a `ModelInputError` naming the model (spec name and id) and the problem.
No torch in `resolve_access`; `huggingface_hub` is imported only for hub ids.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, TypeVar

from tasks.extract import sources, split_zip
from tasks.extract.errors import ModelInputError
from tasks.extract.spec import ModelSpec

#: Seconds to wait for the hub's answer to the one metadata request (env ``PRH_HUB_TIMEOUT``).
DEFAULT_HUB_TIMEOUT = 10.0
#: What huggingface_hub reads as true in its offline variables (``constants._is_true``: any case, no
#: blanks trimmed; anything else, ``0`` or `` 1`` included, is false).
_HUB_TRUE = frozenset({"1", "ON", "YES", "TRUE"})
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class SourceAccess:
    """Where a model's (or tokenizer's) files are read from.

    source: what to pass to ``from_pretrained`` (a local path, or the hub id).
    kind: ``'pkg'``, ``'local'`` or ``'hub'``.
    local_files_only: True when a hub id must be served from the local cache (hub offline or
        unreachable); pass it to every ``from_pretrained``.
    note: why the cache is used (empty otherwise).
    """

    source: str
    kind: Literal["pkg", "local", "hub"]
    local_files_only: bool = False
    note: str = ""


def offline_variables(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` in ``environ`` (default
    ``os.environ``) put the hub offline, read as huggingface_hub reads them when it is imported
    (``constants.HF_HUB_OFFLINE``): the first of them that is set and not empty decides, true
    when it is 1/on/yes/true in any case. ``HF_HUB_OFFLINE=0`` with ``TRANSFORMERS_OFFLINE=1`` is
    online for the hub, and so here (it had read as offline, refusing models the hub would fetch)."""
    deciding = _deciding_offline_variable(environ)
    return deciding is not None and deciding[1].upper() in _HUB_TRUE


def _deciding_offline_variable(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(name, value)`` of the offline variable huggingface_hub reads: the first of
    ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` set and not empty; None when neither is."""
    environ = os.environ if environ is None else environ
    return next(((n, environ[n]) for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if environ.get(n)), None)


def offline_setting(environ: Mapping[str, str] | None = None) -> str:
    """What put the hub offline, for messages: the variable that decides, as set
    (``TRANSFORMERS_OFFLINE=1``), or huggingface_hub's reading when it was imported."""
    if offline_variables(environ):
        name, value = _deciding_offline_variable(environ)
        return f"{name}={value}"
    return "HF_HUB_OFFLINE, as huggingface_hub read it when imported"


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted: :func:`offline_variables` now, or as
    huggingface_hub read them when it was imported (it keeps that reading)."""
    if offline_variables():
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_timeout() -> float:
    """Seconds to wait for the hub's metadata answer: ``PRH_HUB_TIMEOUT`` (default 10), a finite
    number above 0; anything else is a ``ValueError`` naming the variable (``-1``, ``0``, ``nan``
    and ``inf`` had been passed to the hub client as they were)."""
    from storage.env_numbers import env_number

    return env_number("PRH_HUB_TIMEOUT", DEFAULT_HUB_TIMEOUT, what="a number of seconds above 0", above_minimum=True)


def looks_like_path(model_id: str) -> bool:
    """Ids that can only mean a local path (never a hub id)."""
    return (model_id.startswith(("/", "./", "../", "~", ".\\")) or "\\" in model_id
            or model_id.count("/") > 1 or os.path.isabs(model_id) or model_id in (".", ".."))


def is_pinned(revision: str | None) -> bool:
    """Whether ``revision`` names one commit (40 hex digits); a branch or tag (or None: main) can move."""
    return bool(revision) and _COMMIT_HASH.fullmatch(revision) is not None


def is_hub_id(model_id: str) -> bool:
    """Whether a model id means the Hugging Face hub (not a package directory, split zip or local path)."""
    return not (sources.is_pkg_id(model_id) or split_zip.is_split_zip_id(model_id) or looks_like_path(model_id)
                or Path(model_id).expanduser().exists())


def upstream_commit(spec: ModelSpec) -> str | None:
    """For an ``hf`` model read from the hub at a revision that can move (None: ``main``, a branch
    or a tag; see `is_pinned`), the commit that revision points at on the hub now. None for any
    other model, or when the hub cannot tell: offline (``HF_HUB_OFFLINE``), unreachable, an error
    answer or no answer within ``PRH_HUB_TIMEOUT`` s. One metadata request; never raises."""
    if spec.loader != "hf" or is_pinned(spec.revision) or not is_hub_id(spec.id):
        return None
    try:
        if hub_offline():
            return None
        from huggingface_hub import HfApi

        sha = HfApi().model_info(spec.id, revision=spec.revision, timeout=hub_timeout()).sha
    except Exception:  # noqa: BLE001 - a hub that cannot tell is not an error here
        return None
    return sha if isinstance(sha, str) and _COMMIT_HASH.fullmatch(sha) else None


#: Keyword arguments of ``AutoConfig.from_pretrained`` that say how and where a config is read, not
#: fields of it: under an ``hf`` model's ``config:`` (passed to it as overrides) some failed with a
#: raw ``TypeError`` (``got multiple values``), the rest were used unseen (a token, a proxy, a config
#: file read from another folder) and recorded as overrides of the feature version.
LOADING_OPTIONS = frozenset({
    "trust_remote_code", "code_revision", "revision", "local_files_only", "return_unused_kwargs", "token",
    "use_auth_token", "proxies", "cache_dir", "force_download", "resume_download", "subfolder", "gguf_file",
    "name_or_path", "_configuration_file", "_from_auto", "_from_pipeline", "_commit_hash",
})
_ON_THE_ENTRY = {"trust_remote_code": "set 'trust_remote_code' on the model entry, beside 'id'",
                 "revision": "set 'revision' on the model entry, beside 'id'",
                 "token": "a private or gated model reads its token from HF_TOKEN",
                 "use_auth_token": "a private or gated model reads its token from HF_TOKEN"}


def refuse_loading_options(spec: ModelSpec) -> None:
    """Raise `ModelInputError` when an ``hf`` spec's ``config`` overrides hold `LOADING_OPTIONS`
    (named, never their values: one may be a token), with where each belongs when it has a place."""
    found = sorted(set(spec.config) & LOADING_OPTIONS) if spec.loader == "hf" else []
    if found:
        hints = "; ".join(dict.fromkeys(_ON_THE_ENTRY[key] for key in found if key in _ON_THE_ENTRY))
        raise ModelInputError(spec.name, spec.id, f"config key(s) {', '.join(map(repr, found))} are options of how "
                              "the checkpoint is read, not fields of its config (the 'config' entry holds overrides "
                              "of those fields only)" + (f": {hints}" if hints else ""))


def resolve_access(spec: ModelSpec, model_id: str, revision: str | None, what: str = "model") -> SourceAccess:
    """Check that ``model_id`` (the spec's id or tokenizer) can be loaded; see the module docstring.
    An ``hf`` model's ``config`` holding `LOADING_OPTIONS` is refused first (`refuse_loading_options`)."""

    def fail(problem: str) -> ModelInputError:
        return ModelInputError(spec.name, spec.id, problem if what == "model" else f"tokenizer {model_id!r}: {problem}")

    refuse_loading_options(spec)

    if sources.is_pkg_id(model_id):
        try:
            path = sources.resolve_pkg_path(model_id)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from None
        if revision is not None:
            raise fail(f"revision {revision!r} applies to Hugging Face hub ids, not to package directories")
        return SourceAccess(str(path), "pkg")

    if split_zip.is_split_zip_id(model_id):
        if revision is not None:
            raise fail(f"revision {revision!r} applies to Hugging Face hub ids, not to pkgzip: archives")
        try:
            return SourceAccess(str(split_zip.resolve_split_zip(model_id)), "pkg")
        except (FileNotFoundError, ValueError, zipfile.BadZipFile) as exc:
            raise fail(f"cannot use the split zip: {exc}") from None

    local = Path(model_id).expanduser()
    if local.exists():
        if revision is not None:
            raise fail(f"revision {revision!r} applies to Hugging Face hub ids; {str(local)!r} is a local path "
                       "(check out the revision there and drop 'revision')")
        if local.is_dir() and not (local / "config.json").is_file() and what == "model":
            raise fail(f"local directory {str(local)!r} has no config.json (not a Hugging Face checkpoint)")
        return SourceAccess(str(local), "local")
    if looks_like_path(model_id):
        where = "" if local.is_absolute() else f"; relative paths are read from the working directory: {str(local.absolute())!r}"
        raise fail(f"local path {str(local)!r} does not exist{_near_path_hint(local)}{where}")

    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError as exc:
        raise fail(f"not an existing local path and not a valid Hugging Face id: {exc}") from None
    return _hub_access(model_id, revision, _with_local_hint(fail, local))


def _with_local_hint(fail, local: Path):
    """``fail`` with a note appended when ``local`` (a hub-id-shaped id, ``models/my-vit``) could
    be a mistyped local path: its parent folder exists here, so the hub error alone would hide
    the typo; names the closest folder there."""
    parent = local.parent
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir()] if str(parent) not in ("", ".") and parent.is_dir() else None
    except OSError:
        siblings = None
    if siblings is None:
        return fail
    import difflib

    near = difflib.get_close_matches(local.name, siblings, n=1)
    hint = (f"; nor is it a local folder: {str(local.absolute())!r} does not exist"
            + (f" (did you mean {str(parent / near[0])!r}?)" if near else ""))
    return lambda problem: fail(problem + hint)


def _near_path_hint(missing: Path) -> str:
    """`` (did you mean '...'?)`` for a local path that does not exist, when one existing path differs
    from it in its first missing part only, by a close name in that part's folder (``models/tiny-vitt``:
    ``models/tiny-vit``; ``modles/tiny-vit``: ``models/tiny-vit``); empty otherwise."""
    import difflib

    parts = missing.parts
    for depth in range(len(parts) - 1, -1, -1):
        folder = Path(*parts[:depth]) if depth else Path(".")
        try:
            if not folder.is_dir():
                continue
            names = [p.name for p in folder.iterdir()]
        except OSError:
            return ""
        near = difflib.get_close_matches(parts[depth], names, n=1)
        if not near:
            return ""
        candidate = folder / near[0] / Path(*parts[depth + 1:]) if depth + 1 < len(parts) else folder / near[0]
        return f" (did you mean {str(candidate)!r}?)" if candidate.exists() else ""
    return ""


def _hub_access(repo: str, revision: str | None, fail) -> SourceAccess:
    rev = revision or "main"
    if hub_offline():
        if _cached(repo, rev):
            return SourceAccess(repo, "hub", True, f"hub offline ({offline_setting()}): using the local cache")
        raise fail(_not_cached(repo, rev, f"the hub is offline ({offline_setting()})"))

    from huggingface_hub import model_info
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        model_info(repo, revision=revision, timeout=hub_timeout())
    except GatedRepoError:
        raise fail(f"{repo!r} is a gated repository: accept its licence on the hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise fail(f"revision {rev!r} does not exist on the Hugging Face hub for {repo!r}") from None
    except RepositoryNotFoundError:
        raise fail(f"no model {repo!r} on the Hugging Face hub (a private one needs HF_TOKEN)") from None
    except OfflineModeIsEnabled:
        return _hub_access_cached(repo, rev, f"the hub is offline ({offline_setting()})", fail)
    except HfHubHTTPError as exc:  # the hub answered with an error of its own (5xx, rate limit)
        if _cached(repo, rev):
            return SourceAccess(repo, "hub", True, f"hub error ({_brief(exc)}): using the local cache")
        return SourceAccess(repo, "hub", False, f"hub error ({_brief(exc)}): loading will retry")
    except Exception as exc:  # no network: DNS failure, refused or timed-out connection
        return _hub_access_cached(repo, rev, f"the Hugging Face hub cannot be reached ({_brief(exc)})", fail)
    return SourceAccess(repo, "hub")


def _hub_access_cached(repo: str, rev: str, why: str, fail) -> SourceAccess:
    if _cached(repo, rev):
        return SourceAccess(repo, "hub", True, f"{why}: using the local cache")
    raise fail(_not_cached(repo, rev, why))


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _cached(repo: str, rev: str) -> bool:
    return cached_commit(repo, rev) is not None


def cached_commit(repo: str, rev: str) -> str | None:
    """The commit whose files the local hub cache holds for ``repo`` at ``rev`` (a branch, tag or
    commit), None when it holds none (its ``config.json`` is the witness)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, "config.json", revision=rev)
    parts = Path(path).parts if isinstance(path, str) else ()
    return parts[-2] if len(parts) >= 3 and parts[-3] == "snapshots" else None


def cached_revisions(repo: str) -> list[str]:
    """Branch/tag names and commit hashes of ``repo`` in the local hub cache (sorted)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    names: set[str] = set()
    refs = root / "refs"
    if refs.is_dir():
        names.update(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
    snapshots = root / "snapshots"
    if snapshots.is_dir():
        names.update(p.name for p in snapshots.iterdir() if p.is_dir())
    return sorted(names)


def _not_cached(repo: str, rev: str, why: str) -> str:
    from huggingface_hub import constants

    have = cached_revisions(repo)
    if not have:
        return (f"{why}, and {repo!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}): "
                "check the id, or download it on a machine with access and copy the cache")
    return f"{why}, and revision {rev!r} of {repo!r} is not in the local cache (cached: {', '.join(have)})"


#: Model types whose hidden states are not one row per input token, so that pooling over the valid
#: tokens (``avg``) or taking the last one (``last``) is not defined by the batch's attention mask.
UNPOOLABLE_MODEL_TYPES = {
    "reformer": "its hidden states are padded to a multiple of its attention chunk length, so its pooled "
                "features depend on how the batch is padded ('avg' pooling fails mid-extraction; 'last' with left "
                "padding is off by ~5e-3)",
    "funnel": "its blocks pool the sequence down to a fraction of its tokens, so its hidden states are not one "
              "row per token (and its AutoModel entry is a pair of classes, which the extractor cannot load)",
    "canine": "its deep layers run on the characters downsampled by its downsampling_rate, so its hidden states "
              "are not one row per token (and it has no input token embeddings: refused after its weights loaded)",
}


def known_problem(spec: ModelSpec) -> str | None:
    """Why an ``hf``/``random_hf`` spec is known to fail, told from its config class alone (no weights,
    its ``config`` overrides not applied), or None: a `UNPOOLABLE_MODEL_TYPES` model type, or a
    ``config`` key (sub-config dicts included) that is a read-only property of the config class
    (``use_return_dict``: setting it raised a raw ``AttributeError`` at the check, again at the
    extraction). A config that cannot be read, or a class only remote code defines, is None here:
    ``check_model`` tells why. Reads no network: a hub model is told once its config is cached.
    Every public entry point (``check_model``, ``load_extractor``) runs it through `refuse_known_problem`."""
    return remote_code_problem(spec) or _class_problem(spec, _config_class_of(spec) if spec.loader in ("hf", "random_hf") else None)


_Checked = TypeVar("_Checked")


def refuse_known_problem(spec: ModelSpec, check: Callable[[], _Checked]) -> _Checked:
    """``check()`` (a model check, which may fetch a hub config) behind `known_problem`, whose problem
    is raised as a `ModelInputError`. The config class is read once, before the check, where it can be
    told then (the check's own errors for these models are unhelpful: Funnel); else (a hub model not
    cached yet) after the check, which fetched the config, also when the check fails with another
    error than a `ModelInputError` (chained). Returns what ``check()`` returns."""
    _raise_problem(spec, remote_code_problem(spec))
    told = _config_class_of(spec) if spec.loader in ("hf", "random_hf") else None
    if told is not None:
        _raise_problem(spec, _class_problem(spec, told))
        return check()
    try:
        result = check()
    except ModelInputError as exc:  # a hub config the check fetched may name the custom code it refused
        problem = remote_code_problem(spec)
        if problem is None:
            raise
        raise ModelInputError(spec.name, spec.id, problem) from exc
    except Exception as exc:  # noqa: BLE001 - re-raised unless the config it fetched names a known problem
        problem = known_problem(spec)
        if problem is None:
            raise
        raise ModelInputError(spec.name, spec.id, problem) from exc
    _raise_problem(spec, known_problem(spec))
    return result


def _raise_problem(spec: ModelSpec, problem: str | None) -> None:
    if problem is not None:
        raise ModelInputError(spec.name, spec.id, problem)


def _class_problem(spec: ModelSpec, cls: type | None) -> str | None:
    """`known_problem` of a spec whose config class is ``cls`` (None: not told)."""
    if cls is None:
        return None
    model_type = getattr(cls, "model_type", "")
    if model_type in UNPOOLABLE_MODEL_TYPES:
        return f"model type {model_type!r} is not supported: {UNPOOLABLE_MODEL_TYPES[model_type]}"
    fixed = _read_only_keys(cls, spec.config, "")
    if fixed:
        return (f"config key(s) {', '.join(map(repr, fixed))} are read-only properties of {cls.__name__} "
                "(computed from other fields), not fields that can be set")
    return None


def remote_code_problem(spec: ModelSpec) -> str | None:
    """Why an ``hf`` spec without ``trust_remote_code`` cannot be read: its ``config.json`` (a local
    or package folder's, or a hub model's cached one: no network) maps ``AutoConfig`` to custom code
    (``auto_map``) for a model type this transformers does not know, which ``AutoConfig`` refuses to
    run without the opt-in (its message, cut to one line, had lost the fix: the entry's field). None
    otherwise: opted in, a model type transformers knows (its own code is used), or a config not
    readable here (the check tells)."""
    if spec.loader != "hf" or spec.trust_remote_code:
        return None
    found = _config_json(spec)
    auto_map = found.get("auto_map") if isinstance(found, dict) else None
    reference = auto_map.get("AutoConfig") if isinstance(auto_map, dict) else None
    if not reference:
        return None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = found.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return None
    import transformers

    kind = f"model type {model_type!r}, which transformers {transformers.__version__} does not know" \
        if isinstance(model_type, str) else "no model type transformers knows"
    return (f"its config.json maps AutoConfig to custom code shipped with the checkpoint ({reference!r}; {kind}), "
            "which runs only with trust_remote_code: set trust_remote_code: true on the model entry if you trust "
            "that code (it runs on this machine when the model is checked and loaded)")


def _config_json(spec: ModelSpec) -> dict | None:
    """The ``config.json`` of an ``hf`` spec read without the network: a local or package folder's,
    a hub model's cached one at its revision; None when there is none here or it cannot be read."""
    import json

    try:
        if sources.is_pkg_id(spec.id) or split_zip.is_split_zip_id(spec.id) or Path(spec.id).expanduser().exists():
            found: object = Path(resolve_access(spec, spec.id, spec.revision).source) / "config.json"
        else:  # a hub id: its cached config only (one metadata request per model is the check's own)
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(spec.id, "config.json", revision=spec.revision or "main")
        if not isinstance(found, (str, Path)):
            return None
        loaded = json.loads(Path(found).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - unreadable here: check_model names the problem
        return None
    return loaded if isinstance(loaded, dict) else None


def _config_class_of(spec: ModelSpec) -> type | None:
    """The transformers config class of a spec, told without the network: ``random_hf`` names it;
    an ``hf`` checkpoint's ``config.json`` (a local or package folder, or the hub cache) names its
    model type. None when it cannot be told here (a hub model not cached yet, a model type only
    remote code defines)."""
    import transformers
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if spec.loader == "random_hf":
        cls = getattr(transformers, str(spec.id), None)
        return cls if isinstance(cls, type) and issubclass(cls, PretrainedConfig) else None
    found = _config_json(spec)
    model_type = found.get("model_type") if found is not None else None
    return CONFIG_MAPPING[model_type] if isinstance(model_type, str) and model_type in CONFIG_MAPPING else None


def _read_only_keys(cls: type, overrides: dict, prefix: str) -> list[str]:
    """Keys of ``overrides`` (``prefix``-dotted, recursing into ``cls.sub_configs``) that name a
    property of ``cls`` without a setter."""
    import inspect

    found = []
    subs = getattr(cls, "sub_configs", None)  # a class property
    subs = subs if isinstance(subs, dict) else {}
    for key, value in overrides.items():
        attribute = inspect.getattr_static(cls, str(key), None)
        if isinstance(attribute, property) and attribute.fset is None:
            found.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(subs.get(key), type):
            found += _read_only_keys(subs[key], value, f"{prefix}{key}.")
    return found
