"""Load the causal LMs to compare, with their tokenizers and a record of where the weights came from.

A model is named by one string, a *spec*, resolved in this order:

1. an alias of a bundled offline asset (``hf_repsim.assets.MODEL_ALIASES``, e.g. ``smollm2-135m-instruct``);
2. a local folder holding ``config.json``, weights and tokenizer files (what ``save_pretrained`` writes);
3. a local ``.gguf`` file (dequantised by transformers, needs the ``gguf`` package);
4. a Hugging Face hub id, read from the local hub cache; it is downloaded only when the hub is reachable and
   ``HF_HUB_OFFLINE`` is not set.

Weights are read from safetensors (or GGUF) only. Pickle checkpoints (``.bin``, ``.pt``, ``.pth``, ``.pkl``) can
run code when unpickled, so they are refused unless the caller passes ``allow_pickle=True``; even then
transformers unpickles them with ``torch.load(weights_only=True)``. Remote code runs only with
``trust_remote_code=True``.

Two models can be compared only if they see identical token sequences, so ``check_same_vocabulary`` compares the
token strings of their tokenizers id by id (DESIGN.md, section 5).

Example:
    >>> loaded = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> loaded.source["kind"], loaded.model.training  # doctest: +SKIP
    ('alias', False)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from hf_repsim import assets

logger = logging.getLogger(__name__)

SourceKind = Literal["alias", "folder", "hub", "gguf"]

#: Suffixes of pickle checkpoints: unpickling one can run arbitrary code.
PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".pkl")

#: Magic bytes that open every GGUF file.
GGUF_MAGIC = b"GGUF"

_ACCEPTED_SPECS = (
    "an alias ({aliases}), a local folder with config.json (as written by save_pretrained), a local .gguf file, "
    "or a Hugging Face hub id already in the local hub cache"
)


class ModelLoadError(ValueError):
    """A model spec could not be resolved or its checkpoint could not be read."""


class UnsafeCheckpointError(ModelLoadError):
    """A checkpoint is a pickle (it could run code when loaded) and ``allow_pickle`` was not given."""


class CorruptCheckpointError(ModelLoadError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, or not the format its name says)."""


class VocabularyMismatchError(ValueError):
    """Two models' tokenizers map some token id to different token strings."""


@dataclass
class LoadedModel:
    """A causal LM ready for comparison.

    Attributes:
        name: a short name for reports: the alias or hub id, else the folder's or the .gguf file's name.
        model: the transformers causal LM, in eval mode.
        tokenizer: its tokenizer.
        source: where it came from: ``kind`` (one of "alias", "folder", "hub", "gguf"), ``path`` (the local
            folder or file read), ``sha256`` (weight file name -> hex digest of the local weight files that were
            read), and for the hub ``revision`` (the cached commit).
    """

    name: str
    model: Any
    tokenizer: Any
    source: dict[str, Any] = field(default_factory=dict)


def load_model(
    spec: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from an alias, a local folder, a local .gguf file or a hub id.

    Args:
        spec: what to load (the module docstring gives the resolution order).
        dtype: floating dtype to load the weights in; None keeps the checkpoint's own dtype (float16 and bfloat16
            checkpoints are upcast only when asked, e.g. ``dtype=torch.float32``).
        trust_remote_code: let transformers run the model repository's own code. Leave False unless you trust it.
        allow_pickle: accept a pickle checkpoint (``pytorch_model.bin`` and the like) when a folder has no
            safetensors; transformers then unpickles it with ``weights_only=True``.

    Returns:
        A ``LoadedModel`` whose model is in eval mode, in ``dtype`` if given.

    Raises:
        ModelLoadError: the spec is no alias, no existing folder with config.json, no .gguf file and no cached hub
            id; or a folder lacks weights or tokenizer files.
        UnsafeCheckpointError: the only weights are a pickle and ``allow_pickle`` is False.
        CorruptCheckpointError: a .gguf file is empty, truncated or not a GGUF file.
        TypeError: ``dtype`` is not a floating ``torch.dtype``.

    Example:
        >>> loaded = load_model("smollm2-135m-instruct", dtype=torch.float32)  # doctest: +SKIP
        >>> loaded.model.dtype  # doctest: +SKIP
        torch.float32
    """
    _check_dtype(dtype)
    options = {"dtype": "auto" if dtype is None else dtype, "trust_remote_code": trust_remote_code}
    start = time.perf_counter()
    text = os.fspath(spec)
    path = Path(text).expanduser()

    if text in assets.MODEL_ALIASES:
        folder = assets.MODEL_ALIASES[text]()
        loaded = _load_folder(folder, text, "alias", options, allow_pickle)
    elif path.is_dir():
        loaded = _load_folder(path, path.resolve().name, "folder", options, allow_pickle)
    elif path.is_file():
        loaded = _load_file(path, options)
    elif _looks_like_path(text):
        resolved = "" if str(path.absolute()) == text else f" (resolved to {path.absolute()})"
        raise ModelLoadError(
            f"Expected {_accepted()}; got {text!r}, which looks like a path but does not exist{resolved}. Check the "
            "path for typos."
        )
    else:
        loaded = _load_hub(text, options, allow_pickle)

    loaded.model.eval()
    logger.info(
        "Loaded %s (%s, %s) in %.1f s",
        loaded.name,
        loaded.source["kind"],
        loaded.model.dtype,
        time.perf_counter() - start,
    )
    return loaded


def _check_dtype(dtype: object) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(
            f"Expected dtype to be a floating torch.dtype (e.g. torch.float32) or None for the checkpoint's own "
            f"dtype, got {dtype!r}."
        )


def _accepted() -> str:
    return _ACCEPTED_SPECS.format(aliases=", ".join(repr(a) for a in sorted(assets.MODEL_ALIASES)))


def _looks_like_path(text: str) -> bool:
    """Whether a spec that names nothing on disk was meant as a path rather than as a hub id ("org/name")."""
    return (
        text.startswith((".", "~", "/"))
        or text.count("/") > 1
        or "\\" in text
        or text.lower().endswith((".gguf", ".safetensors", ".json", *PICKLE_SUFFIXES))
    )


def _load_file(path: Path, options: dict) -> LoadedModel:
    """Load a local file spec: a .gguf file; a pickle or any other file is refused with the reason."""
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return _load_gguf(path, options)
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeCheckpointError(
            f"Expected {_accepted()}; got the pickle file {path}. A pickle can run code when loaded, and a bare "
            "weight file lacks the config: convert the checkpoint to safetensors in a folder with config.json "
            "(model.save_pretrained(folder)), then pass that folder."
        )
    raise ModelLoadError(
        f"Expected {_accepted()}; got the file {path} ({suffix or 'no suffix'}). Pass the folder that holds it "
        f"together with config.json, e.g. {str(path.parent)!r}."
    )


def _weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The safetensors files and the pickle files directly inside ``folder``, sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    safetensors = [p for p in files if p.name.endswith(".safetensors")]
    pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES and p.name != "training_args.bin"]
    return safetensors, pickles


def _checked_weights(folder: Path, what: str, allow_pickle: bool) -> list[Path]:
    """The weight files a folder will be loaded from; refuse pickles unless allowed, and folders without weights."""
    safetensors, pickles = _weight_files(folder)
    if safetensors:
        return safetensors
    if pickles and not allow_pickle:
        names = ", ".join(p.name for p in pickles)
        raise UnsafeCheckpointError(
            f"Expected safetensors weights (model.safetensors or model-*.safetensors) in {what}, got only pickle "
            f"checkpoints: {names}. Unpickling can run arbitrary code, so hf_repsim refuses it by default. Convert "
            "the checkpoint to safetensors (load it once where you trust it, then model.save_pretrained(folder)), "
            "or pass allow_pickle=True if you trust the file (it is then loaded with torch.load(weights_only=True))."
        )
    if pickles:
        return pickles
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    hint = f" To load a GGUF file, pass its path, e.g. {str(folder / ggufs[0])!r}." if ggufs else ""
    names = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise ModelLoadError(
        f"Expected weights (model.safetensors, or sharded model-*.safetensors with their index) in {what}, got: "
        f"{names}. Save the model there with model.save_pretrained(folder).{hint}"
    )


def _load_folder(folder: Path, name: str, kind: SourceKind, options: dict, allow_pickle: bool) -> LoadedModel:
    """Load a model saved with save_pretrained (or a hub snapshot) from a local folder."""
    if not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        hint = f" It holds a GGUF file: pass that file instead, e.g. {str(ggufs[0])!r}." if ggufs else ""
        raise ModelLoadError(f"Expected {_accepted()}; got the folder {folder}, which has no config.json.{hint}")
    weights = _checked_weights(folder, f"the folder {folder}", allow_pickle)
    try:
        model = _from_pretrained_model(folder, options, allow_pickle, local_files_only=True)
    except OSError as error:
        names = ", ".join(p.name for p in weights)
        raise ModelLoadError(
            f"Expected transformers to load the weights in {folder} ({names}), but it failed: {error} Save the "
            "model there with model.save_pretrained(folder)."
        ) from error
    tokenizer = _from_pretrained_tokenizer(folder, options, local_files_only=True)
    source = {"kind": kind, "path": str(folder), "sha256": _digests(weights)}
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, source=source)


def _from_pretrained_model(where: str | Path, options: dict, allow_pickle: bool, **kwargs) -> Any:
    from transformers import AutoModelForCausalLM

    # use_safetensors=True makes transformers itself refuse pickles; weights_only=True is the safe unpickler.
    return AutoModelForCausalLM.from_pretrained(
        where, use_safetensors=None if allow_pickle else True, weights_only=True, **options, **kwargs
    )


def _from_pretrained_tokenizer(where: str | Path, options: dict, **kwargs) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=options["trust_remote_code"], **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"Expected tokenizer files (tokenizer.json or tokenizer_config.json with its vocabulary) beside the "
            f"model in {where}, but the tokenizer could not be loaded: {error} Save it there with "
            "tokenizer.save_pretrained(folder)."
        ) from error


def _digests(files: Sequence[Path]) -> dict[str, str]:
    """File name -> sha256 hex digest, streamed in chunks (a model's weights can be large)."""
    start = time.perf_counter()
    digests = {path.name: assets.sha256_file(path) for path in files}
    logger.debug("Hashed %d weight files in %.1f s", len(files), time.perf_counter() - start)
    return digests


def _load_gguf(path: Path, options: dict) -> LoadedModel:
    """Dequantise a local GGUF file with transformers; unreadable files raise ``CorruptCheckpointError``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_magic(path)
    kwargs = {"gguf_file": path.name, "local_files_only": True, "trust_remote_code": options["trust_remote_code"]}
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=options["dtype"], **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    except Exception as error:  # the GGUF reader fails with ValueError, IndexError, OSError, ... on a bad file
        raise _gguf_error(path, error) from error
    source = {"kind": "gguf", "path": str(path), "sha256": _digests([path])}
    return LoadedModel(name=path.name, model=model, tokenizer=tokenizer, source=source)


def _check_gguf_magic(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise CorruptCheckpointError(
            f"Expected a GGUF file starting with the magic bytes {GGUF_MAGIC!r}, got {path} ({size} bytes) starting "
            f"with {head!r}. The file is empty, corrupt or not a GGUF file: download or export it again."
        )


def _gguf_error(path: Path, error: Exception) -> ModelLoadError:
    """Explain why transformers could not load a GGUF file: a damaged file, or one transformers cannot convert."""
    import gguf

    size = path.stat().st_size
    reason = f"{type(error).__name__}: {str(error).rstrip('.')}"
    try:
        reader = gguf.GGUFReader(path)
        needed = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as read_error:  # noqa: BLE001 - any failure to parse means an unreadable file
        return CorruptCheckpointError(
            f"Expected a complete GGUF file, got {path} ({size} bytes), which the gguf reader cannot parse "
            f"({type(read_error).__name__}: {read_error}); it is probably truncated or corrupt. Download or export "
            f"it again and compare its size and sha256 with the source. (transformers said: {reason})"
        )
    if needed > size:
        return CorruptCheckpointError(
            f"Expected a GGUF file of at least {needed} bytes (the end of its last tensor), got {path} with {size} "
            f"bytes: it is truncated. Download or export it again. (transformers said: {reason})"
        )
    return ModelLoadError(
        f"{path} is a readable GGUF file, but transformers could not load it as a causal LM: {reason}. Check that "
        "transformers supports its architecture and quantization types, or convert it to a safetensors folder."
    )


def _offline() -> bool:
    """Whether to stay off the network: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) now, or when the hub was imported."""
    from huggingface_hub import constants

    flags = (os.environ.get(key, "").upper() for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags) or constants.HF_HUB_OFFLINE


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local hub-cache folder of ``repo_id`` at its cached main revision, if its config.json is cached."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def _load_hub(repo_id: str, options: dict, allow_pickle: bool) -> LoadedModel:
    """Load a hub id from the local hub cache (downloading only when online)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelLoadError(
            f"Expected {_accepted()}; got {repo_id!r}, which is none of these (not an alias, not an existing path, "
            "and not a valid hub id). Check the spelling, or pass an existing folder or .gguf file."
        ) from None

    offline = _offline()
    snapshot = _cached_snapshot(repo_id)
    if snapshot is None and offline:
        raise ModelLoadError(
            f"Expected {_accepted()}; got {repo_id!r}: not an alias, not an existing path, and not in the local hub "
            "cache (HF_HUB_OFFLINE is set, so nothing is downloaded). Fix the spelling, pass a local folder or "
            "a .gguf file, or download the model on a machine with access to the hub and copy its cache here."
        )
    if snapshot is not None:
        _checked_weights(snapshot, f"the cached hub snapshot of {repo_id} ({snapshot})", allow_pickle)
    try:
        model = _from_pretrained_model(repo_id, options, allow_pickle, local_files_only=offline)
    except OSError as error:
        raise ModelLoadError(
            f"Expected {_accepted()}; got {repo_id!r}, which transformers could not load from the hub or its cache: "
            f"{error} If it only has pickle weights, pass allow_pickle=True if you trust them."
        ) from error
    tokenizer = _from_pretrained_tokenizer(repo_id, options, local_files_only=offline)

    # Hash what the cache now holds (the snapshot exists after a download too).
    snapshot = _cached_snapshot(repo_id)
    weights = _checked_weights(snapshot, repo_id, allow_pickle) if snapshot is not None else []
    source = {
        "kind": "hub",
        "path": str(snapshot) if snapshot is not None else None,
        "sha256": _digests(weights),
        "revision": snapshot.name if snapshot is not None else None,
    }
    return LoadedModel(name=repo_id, model=model, tokenizer=tokenizer, source=source)


def _vocabulary(tokenizer: Any) -> list[str | None]:
    """The token string of every id ``0 .. len(tokenizer) - 1`` (added tokens included; None for unused ids)."""
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def check_same_vocabulary(loaded: Sequence[LoadedModel]) -> None:
    """Check that all models map every token id to the same token string.

    The token strings are compared id by id, not the tokenizers' names: two checkpoints of one family share a
    vocabulary whatever they are called, and two tokenizers of the same size may still differ. Each model is
    compared with the first.

    Args:
        loaded: the models to compare (fewer than two: nothing to check).

    Raises:
        VocabularyMismatchError: the sizes differ or some id maps to different tokens; the message gives both
            sizes and the first differing id with both tokens.
    """
    if len(loaded) < 2:
        return
    first = loaded[0]
    reference = _vocabulary(first.tokenizer)
    for other in loaded[1:]:
        tokens = _vocabulary(other.tokenizer)
        if tokens == reference:
            continue
        index = next(
            (i for i, (a, b) in enumerate(zip(reference, tokens)) if a != b), min(len(reference), len(tokens))
        )
        a = reference[index] if index < len(reference) else "<none: past the end>"
        b = tokens[index] if index < len(tokens) else "<none: past the end>"
        if len(reference) == len(tokens):
            what = f"different tokenizers with the same vocabulary size ({len(tokens)} tokens)"
        else:
            what = f"vocabularies of {len(reference)} and {len(tokens)} tokens"
        raise VocabularyMismatchError(
            f"Expected {first.name!r} and {other.name!r} to share one vocabulary (the same token for every id), got "
            f"{what}; the first difference is at token id {index}: {a!r} in {first.name!r} vs {b!r} in "
            f"{other.name!r}. Both models must see identical token sequences: compare models that use the same "
            "tokenizer."
        )
