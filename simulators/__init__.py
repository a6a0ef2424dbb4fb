"""Simulated districts for development, demos, load tests and detection scoring (see README.md).

Seeded signal models of every built-in kind with labelled events and faults (`signals/`),
scenario files (`scenario`, `scenarios/*.toml`), the transports sensors really use (`transports/`:
RawBlocks over MQTT, sensor-node frames and Modbus RTU units on pseudo-terminals), replay at
real-time pace or faster (`runner`), ground truth (`truth`), alert collection (`collect`) and
scoring (`scoring`); `servers` starts local Mosquitto and VictoriaMetrics, `demo` composes all
of it with real agents and a gateway. It drives agents only through the agent's public entry
(`edge_agent.AgentConfig`, `precompile`, `FAULT_RULES`) and the `lifeline` command.

Public names: `cli.simulate` (the `lifeline simulate` group), `demo.run_demo` (`lifeline demo`),
`scenario.load_scenario` and `builtin_scenarios`, `agent_config.write_agent_configs`,
`runner.run_scenario` and `replay`, `scoring.score` and `render_report`, `truth.GroundTruth`,
`collect.AlertCollector`, `servers.MosquittoServer` and `VictoriaMetricsServer`,
`signals.build_model` and `LabelledEvent`.
"""
