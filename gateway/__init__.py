"""The central gateway: MQTT to the time-series store, tier routing, registry (see README.md)."""
