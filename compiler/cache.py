"""Content-addressed store of pass results.

Layout: <root>/<full sha256 key>/manifest.json + output/. An entry is written
in <root>/tmp/ and renamed into place, so an entry that exists is complete;
the manifest records the output's digest, which is checked again on read (a
corrupt entry is discarded, with a warning, and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import Artifact, sha256_path
from .faults import point

MANIFEST = "manifest.json"


def cache_key(material: dict[str, Any]) -> str:
    """Full sha256 of a canonical JSON encoding of everything the result depends on."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CacheEntry:
    key: str
    artifact: Artifact
    manifest: dict[str, Any]


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    def new_workdir(self, label: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.tmp))

    def get(self, key: str, verify: bool = True, warn: Any = None) -> CacheEntry | None:
        d = self.entry_dir(key)
        mf = d / MANIFEST
        if not mf.is_file():
            return None
        try:
            manifest = json.loads(mf.read_text())
            artifact = Artifact.from_json(manifest["artifact"], base=d)
        except (OSError, ValueError, KeyError) as exc:
            self._discard(d, f"unreadable manifest ({exc})", warn)
            return None
        if verify:
            if not artifact.path.exists() or sha256_path(artifact.path) != artifact.digest:
                self._discard(d, "output does not match its recorded digest", warn)
                return None
        return CacheEntry(key=key, artifact=artifact, manifest=manifest)

    def peek(self, key: str) -> dict[str, Any] | None:
        """The manifest of a complete entry without verifying it (for `plan`)."""
        mf = self.entry_dir(key) / MANIFEST
        try:
            return json.loads(mf.read_text())
        except (OSError, ValueError):
            return None

    def put(
        self, key: str, workdir: Path, artifact: Artifact, manifest: dict[str, Any], replace: bool = False
    ) -> CacheEntry:
        """Move a finished work folder into the store. `artifact.path` lies in `workdir`.
        `replace` (a --force build) puts the new result in place of an existing entry."""
        rel = artifact.path.relative_to(workdir)
        manifest = dict(manifest, key=key, artifact=artifact.to_json(relative_to=workdir))
        (workdir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _fsync_tree(workdir)
        point("cache:put")
        final = self.entry_dir(key)
        if replace and final.exists():
            self._discard(final, "", None)
        try:
            os.rename(workdir, final)
        except OSError:
            # Another build finished the same key first: keep theirs if it verifies.
            shutil.rmtree(workdir, ignore_errors=True)
            existing = self.get(key)
            if existing is None:
                raise
            return existing
        stored = type(artifact)(path=final / rel, digest=artifact.digest, meta=artifact.meta)
        return CacheEntry(key=key, artifact=stored, manifest=manifest)

    def _discard(self, d: Path, why: str, warn: Any) -> None:
        if warn is not None:
            warn(f"cache entry {d.name[:16]}... discarded: {why}; it will be rebuilt")
        trash = self.tmp / f"discard-{d.name}-{os.getpid()}"
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(d, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
