"""The ops console: the operation centre's web view of alerts, cases, map and trends (`lifeline console`).

It follows the gateway's ops topics (`link`, QoS 1, acknowledged only once the database holds
the alert), turns alerts into cases with a recorded life (`cases`: acknowledge, assign,
escalate, note, close, review; published on `P/case/{district}`), keeps them in SQLite or
PostgreSQL (`db`, `schema`, Alembic `migrations`), and serves the board, map, sensor trends
(`trends`, from the store's query API) and cockpit over Starlette with server-sent events
(`web`, `live`), for users with roles and areas (`auth`, `areas`). It builds on the core
(`lifeline`) and imports nothing of the agent or the gateway.

Public names: `config.ConsoleConfig` and `config.load_console_config` (the `console.toml`
models), `service.run_console` (run until SIGTERM; what `lifeline console` calls),
`service.start_in_thread` and `demo.start_demo_console` (the console in `lifeline demo`).
"""
