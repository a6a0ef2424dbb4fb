"""Throughput, latency, memory, fault and detection-quality measurements; figures in RESULTS.md.

Each benchmark is a module run as `python -m benchmarks.NAME` against real parts (Mosquitto,
VictoriaMetrics, `lifeline agent` and `lifeline gateway` processes, pseudo-terminals) with
bounded load, and writes its section of `RESULTS.md` together with the command that produced it.
Unlike the parts it measures, this package may import anything (agent and gateway internals
included).

Public names: `cli.bench` (`lifeline bench`, also `python -m benchmarks`), `suite.BENCHMARKS`
and `suite.write_section` (the one way to rewrite a section of RESULTS.md), `suite.read_section`;
the `bench_*`, `faults*`, `fuzz`, `quality` and `soak` modules are the benchmarks themselves.
"""
