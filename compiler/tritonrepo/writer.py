"""Writes versions into a Triton model repository, safely.

<repo>/<model>/config.pbtxt and <repo>/<model>/<version>/{model.onnx, build_manifest.json}.
A version is assembled in a hidden staging folder inside the model folder
(Triton ignores folders whose names are not positive integers) and renamed
into place, so a polling server never sees half of it. config.pbtxt is
replaced atomically. A lock on the model folder serializes concurrent builds.
A build whose model files equal the latest version's publishes nothing new.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import sha256_file
from ..errors import ConfigError, RepositoryError, UnsafePathError
from ..faults import point
from ..sections import MAX_VERSION
from .config import parse, to_text

MANIFEST = "build_manifest.json"
LOCK = ".mscompile.lock"
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")


@dataclass
class Published:
    model: str
    version: int
    path: Path
    reused: bool  # True: identical to the latest version; nothing new was written
    pruned: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    """Delete a folder, or a link (never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def served_versions(config_text: str | None, existing: list[int]) -> set[int]:
    """The versions a config's version_policy serves among `existing` (Triton's
    default policy: the latest 1)."""
    if not existing:
        return set()
    policy = None
    if config_text:
        try:
            policy = parse(config_text).version_policy
        except Exception:  # noqa: BLE001 - a hand-broken config: assume Triton's default
            policy = None
    if policy is not None and policy.HasField("all"):
        return set(existing)
    if policy is not None and policy.HasField("specific"):
        return set(policy.specific.versions) & set(existing)
    n = policy.latest.num_versions if policy is not None and policy.HasField("latest") else 1
    return set(existing[-max(n, 1) :])


def prune(model_dir: Path, keep_last: int, protected: set[int]) -> list[int]:
    """Remove version folders beyond the newest `keep_last`, never a protected one.
    A folder is renamed to a hidden name first (Triton ignores it), then deleted."""
    vs = versions(model_dir)
    keep = set(vs[-keep_last:]) | protected
    removed = []
    for v in vs:
        if v in keep:
            continue
        trash = model_dir / f".trash-{v}-{os.getpid()}"
        os.rename(model_dir / str(v), trash)
        _remove(trash)
        removed.append(v)
    return removed


def versions(model_dir: Path) -> list[int]:
    """The version folders of a model, in order; ConfigError (exit 2) naming a folder
    whose number Triton cannot hold, before anything is written."""
    if not model_dir.is_dir():
        return []
    found = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))
    if found and found[-1] > MAX_VERSION:
        raise ConfigError(
            f"{model_dir / str(found[-1])}: version {found[-1]} is beyond the 64-bit version numbers Triton serves "
            f"(at most {MAX_VERSION}); rename or remove that folder"
        )
    return found


def model_dir_for(repo: Path, name: str) -> Path:
    repo = repo.resolve()
    d = (repo / name).resolve()
    if d.parent != repo:
        raise RepositoryError(f"model name {name!r} would be written outside the repository {repo}")
    return d


@contextmanager
def model_lock(model_dir: Path, timeout: float = 600.0):
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / LOCK
    try:
        # never through a link: a planted symlink would make every build overwrite its target
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise UnsafePathError(
                f"{path} is a symbolic link; mscompile does not write through links in the repository: remove it"
            ) from None
        raise RepositoryError(f"{path}: cannot open the lock file ({exc.strerror})") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = path.read_text().strip() or "unknown"
                    raise RepositoryError(
                        f"{model_dir}: another build holds the lock ({holder}) for over {timeout:.0f}s; "
                        "wait for it, or remove the stale lock file if that process is gone"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(),
        )
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename; the file gets the mode any new file
    gets under the umask (mkstemp's 0600 would hide it from a server running as
    another user)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(
    repo: Path,
    name: str,
    files: dict[str, Path],
    config_text: str | Callable[[int], str],
    manifest: dict[str, Any],
    lock_timeout: float = 600.0,
    keep_last: int | None = None,
    templates: dict[str, Any] | None = None,
) -> Published:
    """Publish `files` (name in the version folder -> source file) as the next version
    of model `name`, unless they equal the latest version's files.

    The config and the versions it serves switch together: the written config
    lists the served versions explicitly (`version_policy { specific }`, computed
    from the policy in `config_text`: latest N, all or specific), the new version
    folder is renamed into place while the config on disk does not serve it, and
    then one atomic replace of config.pbtxt serves it. A polling server never sees
    the new config beside the previous version, or a new version under the old
    config; after a crash in between, the old pair stands."""
    model_dir = model_dir_for(repo, name)
    digests = {rel: sha256_file(src) for rel, src in files.items()}
    config_for = config_text if callable(config_text) else (lambda _version: config_text)
    with model_lock(model_dir, lock_timeout):
        # staging folders exist only under the lock: any found now are from a killed build
        for stale in [*model_dir.glob(".staging-*"), *model_dir.glob(".trash-*")]:
            _remove(stale)
        existing = versions(model_dir)
        config_path = model_dir / "config.pbtxt"
        if config_path.is_symlink():
            raise UnsafePathError(
                f"{config_path} is a symbolic link; mscompile does not write through links in the repository: remove it"
            )
        before = config_path.read_text() if config_path.is_file() else None
        served_before = served_versions(before, existing)
        warnings = _hand_edited(model_dir, config_path, before)
        if existing:
            latest = model_dir / str(existing[-1])
            try:
                prior = json.loads((latest / MANIFEST).read_text()).get("files")
            except (OSError, ValueError):
                prior = None
            if prior == digests:
                wanted = config_for(existing[-1])
                _, served, dropped = _matching(model_dir, wanted, existing, name, new=existing[-1])
                text = _pinned(wanted, existing, name, only=served)
                if before != text:
                    _write_config(model_dir, text)
                # nothing new: nothing to prune
                return Published(name, existing[-1], latest, reused=True, warnings=warnings + dropped)
        version = (existing[-1] + 1) if existing else 1
        wanted = config_for(version)
        sig, served, dropped = _matching(model_dir, wanted, [*existing, version], name, new=version)
        text = _pinned(wanted, [*existing, version], name, only=served)
        warnings += dropped
        if before is not None and served_before and _policy_kind(before) != "specific":
            # a config that serves by rule (latest N) would serve the new folder the
            # moment it appears: pin what it serves now first (same versions, same model)
            _write_config(model_dir, _pinned(before, existing, name, only=served_before))
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
        try:
            for rel, src in files.items():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, staging / rel)
            for rel, render in (templates or {}).items():  # files that name their own version
                (staging / rel).write_text(render(version))
            full = dict(manifest, model=name, version=version, files=digests, config_sha256=_sha(text), io_sha256=sig)
            (staging / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
            for f in staging.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(staging, 0o777 & ~_umask())
            point("publish:staged")
            final = model_dir / str(version)
            os.rename(staging, final)  # not served yet: the config on disk does not list it
            _fsync_dir(model_dir)
            point("publish:renamed")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _write_config(model_dir, text)  # the switch: one atomic replace
        point("publish:config")
        pruned: list[int] = []
        if keep_last:
            served_now = served_versions(text, versions(model_dir))
            # never a served version, nor one the config before this publish served (a
            # polling server may still serve it): that one goes on a later publish
            pruned = prune(model_dir, keep_last, served_now | served_before)
        return Published(name, version, final, reused=False, pruned=pruned, warnings=warnings)


def serve_only(repo: Path, name: str, keep: set[int], lock_timeout: float = 600.0) -> tuple[str, str]:
    """Under the model's lock, make config.pbtxt serve exactly the versions `keep`
    (deploy); returns (the text it replaced, the text it wrote)."""
    model_dir = model_dir_for(repo, name)
    with model_lock(model_dir, lock_timeout):
        before = (model_dir / "config.pbtxt").read_text()
        text = _pinned(before, versions(model_dir), name, only=keep)
        if text != before:
            _write_config(model_dir, text)
        return before, text


def roll_back(
    repo: Path, name: str, wrote: str, previous: str, serve: set[int] | None, lock_timeout: float = 600.0
) -> bool:
    """Undo `serve_only`, under the model's lock, only while config.pbtxt is still what it
    wrote: the previous text, serving `serve` when given. False (and nothing changed) when
    another writer (a build that published meanwhile) replaced it: theirs stands."""
    model_dir = model_dir_for(repo, name)
    with model_lock(model_dir, lock_timeout):
        current = (model_dir / "config.pbtxt").read_text()
        if current != wrote:
            return False
        _write_config(model_dir, _pinned(previous, versions(model_dir), name, only=serve) if serve else previous)
        return True


def replace_config(repo: Path, name: str, expected: str, text: str, lock_timeout: float = 600.0) -> Path:
    """Under the model's lock, replace config.pbtxt with `text` in one atomic rename, only
    while it is still `expected` (a build that published meanwhile wins: ConfigError);
    the replaced text is kept beside it. Returns the kept copy's path."""
    model_dir = model_dir_for(repo, name)
    with model_lock(model_dir, lock_timeout):
        config_path = model_dir / "config.pbtxt"
        current = config_path.read_text()
        if current != expected:
            raise ConfigError(f"{config_path} changed while tuning (a build published meanwhile): nothing was written")
        keep = model_dir / f".config.pbtxt.before-tune-{time.strftime('%Y%m%d-%H%M%S')}"
        write_atomic(keep, current)
        _write_config(model_dir, text)
        return keep


CONFIG_SHA = ".mscompile-config.sha256"  # what the last publish wrote (to see a hand edit)


def _write_config(model_dir: Path, text: str) -> None:
    write_atomic(model_dir / "config.pbtxt", text)
    write_atomic(model_dir / CONFIG_SHA, _sha(text) + "\n")


def _policy_kind(text: str) -> str | None:
    try:
        return parse(text).version_policy.WhichOneof("policy_choice")
    except Exception:  # noqa: BLE001 - an unreadable config: no rule to keep
        return None


def _pinned(config_text: str, available: list[int], name: str, only: set[int] | None = None) -> str:
    """`config_text` with its version policy replaced by the explicit list of the
    versions it serves among `available`."""
    mc = parse(config_text)
    served = sorted(only if only is not None else served_versions(config_text, available))
    if not served:
        raise ConfigError(
            f"triton.version_policy.specific: {sorted(mc.version_policy.specific.versions)} names no version of "
            f"{name} (it has {', '.join(map(str, available)) or 'none'}); Triton would serve nothing. "
            "Name an existing version, or use latest"
        )
    mc.ClearField("version_policy")
    mc.version_policy.specific.versions.extend(served)
    return to_text(mc)


def io_signature(config_text: str) -> str:
    """What a client and the model agree on, from a config: max_batch_size and every
    input's and output's name, type and dims (sha256 of them). A config serves only the
    versions published with the same signature."""
    mc = parse(config_text)

    def tensors(ts: Any) -> list[Any]:
        return sorted([t.name, int(t.data_type), list(t.dims), list(t.reshape.shape)] for t in ts)

    return _sha(json.dumps([int(mc.max_batch_size), tensors(mc.input), tensors(mc.output)]))


def _io_of(model_dir: Path, version: int) -> str | None:
    """The I/O signature a version was published with (None: an older mscompile's)."""
    try:
        return json.loads((model_dir / str(version) / MANIFEST).read_text()).get("io_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _matching(
    model_dir: Path, config_text: str, existing: list[int], name: str, new: int
) -> tuple[str, set[int], list[str]]:
    """(the config's I/O signature, the versions it serves: those its policy names that
    were published with that signature, `new` (this config's own) always; a warning
    naming those it leaves out). A policy that names only such versions is a ConfigError."""
    sig = io_signature(config_text)
    wanted = served_versions(config_text, existing)
    same = {v for v in wanted if v == new or _io_of(model_dir, v) == sig}
    dropped = sorted(wanted - same)
    if dropped and not same:
        raise ConfigError(
            f"triton.version_policy: version(s) {', '.join(map(str, dropped))} of {name} were published with other "
            "inputs/outputs than this build's config declares (or by an older mscompile); Triton would answer "
            "with the wrong tensors. Name a version of this build's I/O, or use latest"
        )
    warning = (
        [
            f"{name}: version(s) {', '.join(map(str, dropped))} were published with other inputs/outputs (or by "
            "an older mscompile): the new config.pbtxt does not serve them"
        ]
        if dropped
        else []
    )
    return sig, same, warning


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _hand_edited(model_dir: Path, config_path: Path, before: str | None) -> list[str]:
    """A config.pbtxt that is not the one the last publish wrote was edited by hand:
    keep a copy and say so (it is about to be replaced)."""
    try:
        wrote = (model_dir / CONFIG_SHA).read_text().strip()
    except OSError:
        return []
    if before is None or wrote == _sha(before):
        return []
    keep = model_dir / f".config.pbtxt.edited-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copyfile(config_path, keep)
    return [f"{config_path} was edited by hand since the last build; it is replaced, the edit is kept in {keep}"]


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
