"""lifeline's core: what the edge agent, the gateway, the simulators and the console share.

Every other part depends on this package and never on another part's internals; nothing here
imports `edge_agent`, `gateway`, `simulators` or `benchmarks` (tests/test_layout.py checks it),
except the command line, which loads each part's command inside the command itself.

Public modules: `contract` (the external contract as code: ids, levels, tiers, topics,
MessagePack codecs; `Alert`, `Summary`, `Status`, `RawBlock`, `decode_*`, `*_topic`),
`config` (TOML loading into validated models and its messages: `load_toml_model`,
`ConfigSection`, `Ident`, the `[mqtt]` section `MqttSettings`, secrets), `errors`
(`LifelineError`, `ConfigError`, `DecodeError`, `TopicError`), `backoff` (`backoff_delays`,
`LogThrottle`, `held_note`), `mqtt` (paho clients and TLS from `MqttSettings`:
`make_client`, `tls_context`, `describe_connect_error`, `describe_refusal`, `stop_loop`) and
`jitcache` (where compiled kernels are kept: `kernel_cache_dir`), `progress` (`stage_progress`:
a bar on a terminal, a line per stage elsewhere) and `cli` (the `lifeline` command; `python -m
lifeline`). `__version__` is the package version.

Importing the package points numba's on-disk cache at lifeline's kernel cache
(`jitcache.use_kernel_cache`), so every process (agent, precompile, tests, benchmarks) reads and
fills the same one, whatever it imports first.
"""

import sys as _sys

from lifeline.jitcache import use_kernel_cache as _use_kernel_cache

__version__ = "0.1.0"

_use_kernel_cache()
if "numba" in _sys.modules:  # imported before us: make it read the cache directory again
    _sys.modules["numba"].core.config.reload_config()
