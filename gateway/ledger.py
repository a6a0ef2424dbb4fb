"""Which broker deliveries may be acknowledged: in arrival order, once stored and routed.

A delivery is held by its store batch and by each ops publish made for it; it is released as
the store confirms the batch and the broker acknowledges each publish. Acknowledgements leave
in the order the deliveries arrived (MQTT asks for PUBACKs in order), so a delivery waits for
every older one. After a broker disconnect the pending deliveries are forgotten: the broker
re-sends every unacknowledged message of a persistent session, and re-writing a point is
idempotent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Delivery:
    """One message the broker delivered and waits to see acknowledged."""

    mid: int
    qos: int
    epoch: int
    holds: int = 0


class AckLedger:
    """In-order acknowledgement bookkeeping, one broker connection at a time (not thread-safe)."""

    def __init__(self) -> None:
        self._order: deque[Delivery] = deque()
        #: Publish message ids awaiting the broker's PUBACK, oldest first per id: paho reuses an
        #: id only once its PUBACK came in, so the first waiter of an id is the one acknowledged.
        #: One map per connection (0: the session's, 1: the live lane's): their ids are apart.
        self._routes: tuple[dict[int, deque[Delivery | None]], ...] = ({}, {})
        self._publishes = [0, 0]
        #: Publishes of each connection that hold a delivery (routes, not registry snapshots).
        self._holding = [0, 0]

    def __len__(self) -> int:
        """Deliveries received and not yet acknowledged (messages in flight)."""
        return len(self._order)

    def received(self, mid: int, qos: int, epoch: int) -> Delivery:
        """Record a delivery in arrival order; it is free to go until something holds it."""
        delivery = Delivery(mid, qos, epoch)
        self._order.append(delivery)
        return delivery

    @staticmethod
    def hold(delivery: Delivery) -> None:
        """Keep `delivery` unacknowledged until a matching `release`."""
        delivery.holds += 1

    @staticmethod
    def release(delivery: Delivery) -> None:
        """Drop one hold on `delivery`."""
        delivery.holds -= 1

    def published(self, publish_mid: int, delivery: Delivery | None, lane: int = 0) -> None:
        """Note a QoS 1 publish made for `delivery` (held by the caller) on connection `lane`;
        its PUBACK releases it."""
        self._publishes[lane] += 1
        if delivery is not None:
            self._holding[lane] += 1
        routes = self._routes[lane]
        waiters = routes.get(publish_mid)
        if waiters is None:
            routes[publish_mid] = deque((delivery,))
        else:
            waiters.append(delivery)

    def publish_acked(self, publish_mid: int, lane: int = 0) -> bool:
        """The broker acknowledged the publish with this id on connection `lane`: release what
        it held (True if any)."""
        routes = self._routes[lane]
        waiters = routes.get(publish_mid)
        if not waiters:
            return False
        delivery = waiters.popleft()
        self._publishes[lane] -= 1
        if not waiters:
            del routes[publish_mid]
        if delivery is None:
            return False
        self._holding[lane] -= 1
        delivery.holds -= 1
        return True

    @property
    def routes_pending(self) -> int:
        """Publishes on the session's connection that hold a delivery until their PUBACK."""
        return self._holding[0]

    @property
    def publishes_pending(self) -> int:
        """Publishes on the session's connection still waiting for the broker's PUBACK."""
        return self._publishes[0]

    @property
    def live_publishes_pending(self) -> int:
        """Publishes on the live lane still waiting for the broker's PUBACK."""
        return self._publishes[1]

    def ready(self) -> list[Delivery]:
        """Pop the deliveries that may be acknowledged now, oldest first."""
        out: list[Delivery] = []
        order = self._order
        while order and order[0].holds <= 0:
            out.append(order.popleft())
        return out

    def forget(self) -> int:
        """Drop every pending delivery (the connection they came on is gone); returns how many.

        Publishes still waiting for a PUBACK stay tracked (paho re-sends them): when it comes it
        releases a delivery that is no longer in the order, which changes nothing."""
        dropped = len(self._order)
        self._order.clear()
        return dropped
