"""The one place that sets numba options for every kernel, and keeps the on-disk cache honest.

fastmath allows reassociation, contraction (FMA), reciprocals and no signed zeros, but keeps
NaN/inf semantics (no ``nnan``/``ninf``): real data has NaNs and the kernels test for them.
``error_model="numpy"``: a division by zero gives inf/NaN instead of raising, so divisions
need no hidden zero checks (kernels guard the divisions whose result they use).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, TypeVar

import numba

FASTMATH: Final = frozenset({"nsz", "arcp", "contract", "reassoc"})
JIT_OPTIONS: Final[dict[str, Any]] = {
    "cache": True, "nogil": True, "fastmath": set(FASTMATH), "error_model": "numpy",
    "_nrt": False,
}

F = TypeVar("F", bound=Callable[..., Any])

_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_STAMP_NAME: Final = "lifeline-kernels.fingerprint"


def kernel(func: F) -> F:
    """`numba.njit` with the central options; every kernel of this package uses it."""
    return numba.njit(**JIT_OPTIONS)(func)  # type: ignore[no-any-return]


def inlined(func: F) -> F:
    """`kernel` inlined into its callers by numba itself (not left to LLVM's size limits), for
    the per-sample steps of the chain's loops: a call per rule per sample would cost more than
    the rule. (Inlining costs compile time, so the loops around the steps stay plain kernels.)"""
    return numba.njit(**JIT_OPTIONS, inline="always")(func)  # type: ignore[no-any-return]


def source_fingerprint() -> str:
    """Hash of every kernel source file, so a change in any module is seen by every caller."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def drop_stale_cache(kernels: Iterable[Any]) -> None:
    """Delete the package's numba cache files when any kernel source changed.

    numba checks only the source file of the function it loads, not of the functions it
    inlined from other modules (numba issue #1833), so after an edit to e.g. rate.py the chain
    driver would run stale machine code. Call before the first kernel call.
    """
    fingerprint = source_fingerprint()
    paths = {getattr(getattr(k, "_cache", None), "cache_path", None) for k in kernels}
    for path in {Path(p) for p in paths if p}:
        stamp = path / _STAMP_NAME
        try:
            if stamp.read_text() == fingerprint:
                continue
        except OSError:
            pass
        try:
            for stale in [*path.glob("*.nbi"), *path.glob("*.nbc")]:
                if stale.name.split(".", 1)[0] in _module_stems():
                    stale.unlink(missing_ok=True)
            path.mkdir(parents=True, exist_ok=True)
            stamp.write_text(fingerprint)
        except OSError:
            pass  # read-only install: numba then falls back to compiling in memory


def _module_stems() -> set[str]:
    return {p.stem for p in _PACKAGE_DIR.glob("*.py")}
