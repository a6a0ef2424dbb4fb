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
`cli` (the `lifeline` command; `python -m lifeline`). `__version__` is the package version.
"""

__version__ = "0.1.0"
