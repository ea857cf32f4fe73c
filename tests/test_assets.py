"""Offline assets: digest checks, cache location, safe tar extraction, atomic cache entries.

Nothing here downloads or loads a model: the real fetches are checked by hand (see hf_repsim/assets.py).
"""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from hf_repsim import assets


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache root for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("HF_REPSIM_CACHE", str(root))
    return root


def test_verify_sha256_accepts_the_right_digest(tmp_path):
    # A file and its true digest, in upper case to check that case does not matter.
    path = tmp_path / "ok.txt"
    path.write_bytes(b"hello\r\n")
    digest = hashlib.sha256(b"hello\r\n").hexdigest()

    assert assets.verify_sha256(path, digest.upper(), "fix it") == path
    assert assets.sha256_file(path) == digest


def test_verify_sha256_refuses_a_wrong_digest(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"tampered")
    expected = hashlib.sha256(b"original").hexdigest()

    with pytest.raises(assets.ChecksumMismatchError) as error:
        assets.verify_sha256(path, expected, "Delete the cache folder X and retry.")

    # The message names what was expected, what was got and what to do.
    message = str(error.value)
    assert expected in message
    assert hashlib.sha256(b"tampered").hexdigest() in message
    assert "Delete the cache folder X" in message


def test_verify_sha256_reports_a_missing_file(tmp_path):
    with pytest.raises(assets.AssetError, match="does not"):
        assets.verify_sha256(tmp_path / "absent.txt", "0" * 64, "fix it")


def test_cache_dir_prefers_hf_repsim_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_REPSIM_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "mine"


def test_cache_dir_falls_back_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_REPSIM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "hf_repsim"

    # Empty variables count as unset.
    monkeypatch.setenv("HF_REPSIM_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "hf_repsim"


def test_extract_members_writes_only_the_named_files(tmp_path):
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add_file(tar, "pkg-1.0/tests/data/a.txt", b"alpha")
        _add_file(tar, "pkg-1.0/tests/data/b.txt", b"beta")
        _add_file(tar, "pkg-1.0/setup.py", b"print('no')")
    out = tmp_path / "out"
    out.mkdir()

    written = assets.extract_members(archive, ["pkg-1.0/tests/data/b.txt"], out, strip_prefix="pkg-1.0/tests/data/")

    assert written == [(out / "b.txt").resolve()]
    assert (out / "b.txt").read_bytes() == b"beta"
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


@pytest.mark.parametrize("name", ["../escape.txt", "data/../../escape.txt", "/tmp/escape.txt"])
def test_extract_members_refuses_a_member_that_escapes(tmp_path, name):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        _add_file(tar, name, b"owned")
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(assets.AssetError, match="escape|outside"):
        assets.extract_members(archive, [name], out)
    assert not (tmp_path / "escape.txt").exists()
    assert list(out.iterdir()) == []


def test_extract_members_refuses_links(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        _add_symlink(tar, "data/alice29.txt", "/etc/passwd")
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(assets.AssetError, match="regular file"):
        assets.extract_members(archive, ["data/alice29.txt"], out, strip_prefix="data/")
    assert list(out.iterdir()) == []


def test_extract_members_reports_a_missing_member(tmp_path):
    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tar:
        _add_file(tar, "other.txt", b"x")

    with pytest.raises(assets.AssetError, match="has none"):
        assets.extract_members(archive, ["wanted.txt"], tmp_path)


def test_atomic_folder_leaves_nothing_when_the_build_fails(tmp_path):
    final = tmp_path / "entry"

    with pytest.raises(RuntimeError, match="interrupted"), assets._atomic_folder(final) as staging:
        (staging / "half.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("interrupted")

    # Neither the entry nor its staging folder remains.
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_renames_on_success(tmp_path):
    final = tmp_path / "entry"
    with assets._atomic_folder(final) as staging:
        (staging / "done.txt").write_text("ok")
    assert (final / "done.txt").read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_canterbury_refuses_a_tampered_cached_file(cache):
    # A cache entry whose first text was altered after caching.
    folder = cache / assets.CANTERBURY_FOLDER
    folder.mkdir(parents=True)
    for name in assets.CANTERBURY_SHA256:
        (folder / name).write_text("not the original text")

    with pytest.raises(assets.ChecksumMismatchError, match="Delete the cache folder"):
        assets.canterbury_files()


def test_smollm2_refuses_a_cache_built_from_another_gguf(cache):
    folder = cache / assets.SMOLLM2_ALIAS
    folder.mkdir(parents=True)
    (folder / assets.PROVENANCE_FILE).write_text(json.dumps({"gguf_sha256": "0" * 64, "files": {}}))

    with pytest.raises(assets.ChecksumMismatchError, match=assets.SMOLLM2_GGUF_SHA256):
        assets.smollm2_folder()


def test_smollm2_refuses_a_truncated_cache(cache):
    folder = cache / assets.SMOLLM2_ALIAS
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 10)
    provenance = {"gguf_sha256": assets.SMOLLM2_GGUF_SHA256, "files": {"model.safetensors": 1000}}
    (folder / assets.PROVENANCE_FILE).write_text(json.dumps(provenance))

    with pytest.raises(assets.AssetError, match="should have 1000 bytes, got 10"):
        assets.smollm2_folder()


def test_smollm2_returns_a_valid_cache_without_loading(cache):
    folder = cache / assets.SMOLLM2_ALIAS
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    provenance = {"gguf_sha256": assets.SMOLLM2_GGUF_SHA256, "files": {"config.json": 2}}
    (folder / assets.PROVENANCE_FILE).write_text(json.dumps(provenance))

    assert assets.smollm2_folder() == folder
    assert assets.MODEL_ALIASES[assets.SMOLLM2_ALIAS] is assets.smollm2_folder
