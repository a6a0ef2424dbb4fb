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
        self._routes: dict[int, deque[Delivery | None]] = {}
        self._publishes = 0

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

    def published(self, publish_mid: int, delivery: Delivery | None) -> None:
        """Note a QoS 1 publish made for `delivery` (held by the caller); its PUBACK releases it."""
        self._publishes += 1
        waiters = self._routes.get(publish_mid)
        if waiters is None:
            self._routes[publish_mid] = deque((delivery,))
        else:
            waiters.append(delivery)

    def publish_acked(self, publish_mid: int) -> bool:
        """The broker acknowledged the publish with this id: release what it held (True if any)."""
        waiters = self._routes.get(publish_mid)
        if not waiters:
            return False
        delivery = waiters.popleft()
        self._publishes -= 1
        if not waiters:
            del self._routes[publish_mid]
        if delivery is None:
            return False
        delivery.holds -= 1
        return True

    @property
    def publishes_pending(self) -> int:
        """Publishes still waiting for the broker's PUBACK."""
        return self._publishes

    def ready(self) -> list[Delivery]:
        """Pop the deliveries that may be acknowledged now, oldest first."""
        out: list[Delivery] = []
        order = self._order
        while order and order[0].holds <= 0:
            out.append(order.popleft())
        return out

    def forget(self) -> int:
        """Drop every pending delivery (the connection they came on is gone); returns how many."""
        dropped = len(self._order)
        self._order.clear()
        return dropped
