"""Whisper models from the package index: joined from their wheels' parts, checked against the
source's SHA-256 before use, reused after; a tampered or missing part is one clear error."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mmpipeline.voice import packaged


def _fake_packages(tmp_path, monkeypatch, part2: bytes = b"world"):
    for pkg, files in {"fakewhisper_a": {"data/config.json": b"{}", "data/tokenizer.json": b"tok",
                                         "data/model.bin.part1": b"hello "},
                       "fakewhisper_b": {"data/model.bin.part2": part2}}.items():
        for rel, data in files.items():
            f = tmp_path / "site" / pkg / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
        (tmp_path / "site" / pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    return packaged.PackagedModel(
        name="fake", source="test", packages=("fake-a", "fake-b"),
        files=(("config.json", "fakewhisper_a", "data/config.json"),
               ("tokenizer.json", "fakewhisper_a", "data/tokenizer.json")),
        parts=(("fakewhisper_a", "data/model.bin.part1"), ("fakewhisper_b", "data/model.bin.part2")),
        sha256={"config.json": sha(b"{}"), "tokenizer.json": sha(b"tok"), "model.bin": sha(b"hello world")},
        sizes={"config.json": 2, "tokenizer.json": 3, "model.bin": 11})


def test_parts_are_joined_checked_and_reused(tmp_path, monkeypatch):
    spec = _fake_packages(tmp_path, monkeypatch)
    monkeypatch.setitem(packaged.PACKAGED, "fake", spec)
    d = packaged.materialise("fake", tmp_path / "cache")
    assert open(f"{d}/model.bin", "rb").read() == b"hello world"
    mtime = os.stat(f"{d}/model.bin").st_mtime_ns
    assert packaged.materialise("fake", tmp_path / "cache") == d  # reused, not joined again
    assert os.stat(f"{d}/model.bin").st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [d.rsplit("/", 1)[1]]  # no temp dirs left


def test_a_tampered_part_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    spec = _fake_packages(tmp_path, monkeypatch, part2=b"w0rld")
    monkeypatch.setitem(packaged.PACKAGED, "fake", spec)
    with pytest.raises(RuntimeError, match=r"model.bin joined from fake-a, fake-b has sha256 .* reinstall"):
        packaged.materialise("fake", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_package_names_what_to_install(tmp_path, monkeypatch):
    spec = packaged.PackagedModel(name="fake", source="t", packages=("not-installed-x",),
                                  files=(("config.json", "not_installed_x_pkg", "data/config.json"),), parts=(),
                                  sha256={"model.bin": "0" * 64}, sizes={"config.json": 1})
    monkeypatch.setitem(packaged.PACKAGED, "fake", spec)
    with pytest.raises(RuntimeError, match="needs the packages not-installed-x"):
        packaged.materialise("fake", tmp_path / "cache")


def test_whisper_base_from_the_lock_is_systrans_model_and_loads(tmp_path, monkeypatch):
    """The real packages: the joined files are byte for byte Systran/faster-whisper-base, and
    faster-whisper loads them offline through ``voice.model: base``."""
    from mmpipeline.voice.asr import Recognizer, resolve_model

    monkeypatch.setenv("MMP_MODEL_CACHE", str(tmp_path))
    d = resolve_model("base")
    for name, want in packaged.WHISPER_BASE.sha256.items():
        assert packaged._sha256(Path(d) / name) == want
    assert resolve_model("tiny.en") == resolve_model(None)
    rec = Recognizer("base", device="cpu", compute_type="int8", cpu_threads=1)
    assert rec.model.model.is_multilingual and rec.version.startswith("whisper-base-")
