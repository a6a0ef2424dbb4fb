"""What the gateway has done since it started, for logs, the registry topic and `gateway_stats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class GatewayCounters:
    """Monotonic counts (only the worker thread and the store writer thread add to them)."""

    received: int = 0
    bad_payloads: int = 0
    alerts: int = 0
    #: Alerts whose `agent` the registry contradicts (another owner, not allowed, still unknown)
    #: or whose time lies in the future: dead-lettered, neither stored nor routed.
    alerts_refused: int = 0
    #: Alerts that had to wait for their agent's status or summary (each counted once).
    alerts_held: int = 0
    #: Alerts routed flagged `unverified`: level 3-4 ones the registry contradicts (dead-lettered,
    #: not stored), and with `unknown_agents = "accept"` those of agents never heard of (stored).
    alerts_unverified: int = 0
    #: Messages (and store-refused rows) written to the dead-letter file instead of the store.
    dead_lettered: int = 0
    #: Dead-letter rows the byte budget removed (over the life of the state file).
    dead_letters_evicted: int = 0
    #: Messages with a time beyond the gateway's clock plus `clock_skew_s` (dead-lettered).
    future_timestamps: int = 0
    #: Rows the store refused (HTTP 400/422) and the batches holding any; the rest was stored.
    rows_rejected: int = 0
    #: Ownership conflicts raised for ops, and sensors moved to another agent.
    ownership_conflicts: int = 0
    ownership_moves: int = 0
    #: Alerts routed from the live lane ahead of this gateway's backlog, and times it fell behind.
    live_routed: int = 0
    behind: int = 0
    #: Most deliveries held unacknowledged at once (the receive maximum bounds it, if the broker
    #: keeps to it).
    in_flight_peak: int = 0
    #: Times the gateway stopped reading the broker because it held its receive maximum.
    input_paused: int = 0
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
    #: Batches in which the store refused some rows.
    batches_rejected: int = 0
    batches_abandoned: int = 0
    store_retries: int = 0
    broker_disconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return asdict(self)
