"""What the gateway has done since it started, for logs, the registry topic and `gateway_stats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class GatewayCounters:
    """Monotonic counts (only the worker thread and the store writer thread add to them)."""

    received: int = 0
    bad_payloads: int = 0
    alerts: int = 0
    #: Alerts whose `agent` the registry contradicts (another owner, not allowed, still unknown).
    alerts_refused: int = 0
    #: Alerts that had to wait for their agent's status or summary (each counted once).
    alerts_held: int = 0
    #: Alerts accepted although their agent stayed unknown (`gateway.unknown_agents = "accept"`).
    alerts_unverified: int = 0
    summaries: int = 0
    statuses: int = 0
    acked: int = 0
    redelivered: int = 0
    alert_collisions: int = 0
    routed: int = 0
    route_refused: int = 0
    points_stored: int = 0
    rows_without_fields: int = 0
    batches_stored: int = 0
    batches_rejected: int = 0
    batches_abandoned: int = 0
    store_retries: int = 0
    broker_disconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return asdict(self)
