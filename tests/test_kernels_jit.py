"""Every kernel uses the central numba options; the on-disk cache follows source changes."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from numba.core.registry import CPUDispatcher

import edge_agent.kernels as kernels
from edge_agent.kernels import _jit


def all_kernels() -> list[tuple[str, CPUDispatcher]]:
    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"edge_agent.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__:
                found.append((f"{info.name}.{name}", obj))
    return found


def test_the_package_has_kernels() -> None:
    names = {name for name, _ in all_kernels()}
    assert {"chain.run_rules", "features.accumulate_window", "graded.graded_step"} <= names


KERNELS = all_kernels()


@pytest.mark.parametrize(("name", "dispatcher"), KERNELS, ids=[name for name, _ in KERNELS])
def test_every_kernel_uses_the_central_options(name: str, dispatcher: CPUDispatcher) -> None:
    assert dispatcher.targetoptions["nogil"] is True, name
    assert dispatcher.targetoptions["error_model"] == "numpy", name
    assert set(dispatcher.targetoptions["fastmath"]) == set(_jit.FASTMATH), name
    assert not {"nnan", "ninf", "fast"} & set(dispatcher.targetoptions["fastmath"]), name
    assert type(dispatcher._cache).__name__ != "NullCache", f"{name} is not cached"


def test_a_changed_kernel_source_drops_the_stale_cache(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "chain.run_rules-40.py311.nbi").write_bytes(b"stale")
    (cache / "chain.run_rules-40.py311.1.nbc").write_bytes(b"stale")
    (cache / "other_package.f-1.py311.nbi").write_bytes(b"not ours")

    class Fake:
        class _cache:  # noqa: N801 - mimics numba's attribute
            cache_path = str(cache)

    _jit.drop_stale_cache([Fake()])
    assert sorted(p.name for p in cache.iterdir()) == ["lifeline-kernels.fingerprint",
                                                       "other_package.f-1.py311.nbi"]
    (cache / "chain.run_rules-40.py311.nbi").write_bytes(b"fresh")
    _jit.drop_stale_cache([Fake()])  # same sources: the new cache stays
    assert (cache / "chain.run_rules-40.py311.nbi").exists()
    monkeypatch.setattr(_jit, "source_fingerprint", lambda: "edited")
    _jit.drop_stale_cache([Fake()])
    assert not (cache / "chain.run_rules-40.py311.nbi").exists()
