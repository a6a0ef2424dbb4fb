"""Where the compiled detection kernels are kept on disk, so no start after the first compiles.

Numba writes its cache beside the source unless `NUMBA_CACHE_DIR` is set, and an installed
package may be read-only for the service's user: lifeline sets it, before numba is imported, to
the first of `NUMBA_CACHE_DIR` (numba's own variable), `$LIFELINE_CACHE_DIR/numba`,
`$CACHE_DIRECTORY/numba` (systemd's `CacheDirectory=`), `$XDG_CACHE_HOME/lifeline/numba` and
`~/.cache/lifeline/numba`. `lifeline precompile` fills it; it survives restarts and reboots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path


def kernel_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The directory numba keeps the compiled kernels in, from the environment (see above)."""
    if environ.get("NUMBA_CACHE_DIR"):
        return Path(environ["NUMBA_CACHE_DIR"])
    for variable in ("LIFELINE_CACHE_DIR", "CACHE_DIRECTORY"):
        if environ.get(variable):
            return Path(environ[variable].split(":", 1)[0]) / "numba"
    base = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "lifeline" / "numba"


def use_kernel_cache(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Point numba (and every child process) at `kernel_cache_dir()`; call before importing numba."""
    path = kernel_cache_dir(environ)
    environ["NUMBA_CACHE_DIR"] = str(path)
    return path


__all__ = ["kernel_cache_dir", "use_kernel_cache"]
