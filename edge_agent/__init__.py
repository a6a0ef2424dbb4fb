"""lifeline edge agent: reads sensors, detects events at the edge, forwards alerts and summaries."""
__version__ = "0.1.0"
