"""Modules handed over in Python (`mscompile.optimize(module, ...)`): the factory a
build's config names for them, and the digest of what their weights do not hold.

A build re-creates its module from a checkpoint and a factory (the export pass loads
it again from the load pass's copy). For a module object the checkpoint is its
state_dict and the factory is `mscompile.live:module`, which returns a copy of the
object registered under its handle (the model's name) in this process. The weights are digested as a
file; `code_digest` covers the rest a cache key must see: the bytecode of every
method of the module's classes (not the torch.nn ones: their version enters the keys)
and the plain settings each submodule keeps in its attributes."""

from __future__ import annotations

import copy
import hashlib
import types
from typing import Any

from .errors import ConfigError

_LIVE: dict[str, Any] = {}


def register(handle: str, module: Any) -> None:
    _LIVE[handle] = module


def module(handle: str, code: str = "") -> Any:
    """The factory: a copy of the registered module (the build loads the weights into it
    and puts it in eval mode; the caller's object is left as it was). `code` is not read:
    it is in the config so that the cache keys change with the module's code."""
    if handle not in _LIVE:
        raise ConfigError(
            f"source.factory: mscompile.live:module serves modules handed to mscompile.optimize() in this "
            f"Python process; {handle!r} is not one of them (a model.yaml names a module:callable instead)"
        )
    return copy.deepcopy(_LIVE[handle])


def _code(h: Any, co: types.CodeType) -> None:
    h.update(co.co_code)
    h.update(repr(co.co_names).encode())
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            _code(h, c)
        else:
            h.update(repr(c).encode())


_PLAIN = (bool, int, float, str, bytes, type(None))


def _plain(v: Any) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return isinstance(v, _PLAIN)


def code_digest(root: Any) -> str:
    """Bytecode of the methods of every class in the module tree (and their bases),
    except torch's own, and each submodule's plain attributes (numbers, strings, flags)."""
    h = hashlib.sha256()
    seen: set[type] = set()
    for name, sub in root.named_modules():
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}\n".encode())
        for k, v in sorted(vars(sub).items()):
            if not k.startswith("_") and k != "training" and _plain(v):
                h.update(f"{k}={v!r}\n".encode())
        for cls in type(sub).__mro__:
            if cls in seen or cls.__module__.split(".")[0] in ("torch", "builtins", "typing"):
                continue
            seen.add(cls)
            for attr, fn in sorted(vars(cls).items()):
                fn = getattr(fn, "__func__", fn)
                if isinstance(fn, types.FunctionType):
                    h.update(attr.encode())
                    _code(h, fn.__code__)
    return h.hexdigest()
