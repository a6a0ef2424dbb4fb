"""Built-in scenario files (TOML), one per domain and the mixed demo district; see simulators/README.md."""
