"""The central gateway: MQTT to the time-series store, tier routing, registry (see README.md).

It runs at the city's operation centre: a persistent MQTT 5 session with shared subscriptions
(`link`) takes alerts, summaries and statuses off the broker, the worker (`pipeline`) decodes
and validates them (`decode`), writes them as line protocol (`lineproto`) to the store
(`store`, `writer`), routes alerts to `P/ops/{tier}/{district}`, keeps a registry of agents and
sensors (`registry`), and acknowledges each delivery only once it is stored (`ledger`). It
builds on the core (`lifeline`) and imports nothing of the edge agent.

Public names: `config.GatewayConfig` and `config.load_gateway_config` (the `gateway.toml`
models), `service.run_gateway` (run until SIGTERM; what `lifeline gateway` calls) and
`service.GatewayService`; the rest are the gateway's own internals.
"""
