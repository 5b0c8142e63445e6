"""Named fault points, for tests that must kill a build at a known place
instead of sleeping a random time and hoping.

MSCOMPILE_KILL_AT=<point>[#n] sends SIGKILL to this process the n-th time (default:
the first) it reaches <point>; <point> may be a shell-style pattern. Points:
step:start, step:ran (the pass returned; nothing stored yet), cache:put (entry
written, not yet renamed into place), publish:config (config written, version
not yet staged), publish:staged (version folder complete, not yet renamed),
publish:renamed (version in place, retention not yet run). Without the
variable a point costs one dictionary lookup.

MSCOMPILE_KILL_ONCE=<marker file> limits the kill to the first process that gets
there (it creates the marker): a retried task (a build farm's) then runs through.

MSCOMPILE_RAISE_AT=<point> raises InjectedFault (a RuntimeError) there instead: a
pass that fails on its input. Point: pass:<step id> (e.g. pass:fp16/convert_fp16),
reached inside the pass's run, so the failure is reported as that pass's."""

from __future__ import annotations

import fnmatch
import os
import signal

_seen: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """The failure MSCOMPILE_RAISE_AT asked for."""


def point(name: str) -> None:
    raise_at = os.environ.get("MSCOMPILE_RAISE_AT")
    if raise_at and fnmatch.fnmatchcase(name, raise_at):
        raise InjectedFault(f"fault injected at {name} (MSCOMPILE_RAISE_AT)")
    spec = os.environ.get("MSCOMPILE_KILL_AT")
    if not spec:
        return
    pattern, _, nth = spec.partition("#")
    if not fnmatch.fnmatchcase(name, pattern):
        return
    _seen[pattern] = _seen.get(pattern, 0) + 1
    if _seen[pattern] == int(nth or 1):
        once = os.environ.get("MSCOMPILE_KILL_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)
