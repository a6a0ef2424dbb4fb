"""Rule ids shared by the kernels and the agent: small int codes, names, and which rules are faults.

A rule is a *fault* when it says the sensor (or its link) is broken rather than the world:
- ``range``: a value outside what the quantity can physically be (or NaN/inf) is a broken
  transducer, ADC or decoder, never a flood or a leak.
- ``flatline``: every live signal carries noise; a reading that does not move at all for minutes
  is a frozen sensor, ADC or firmware.
- ``spike``: a one- or two-sample excursion that comes straight back is faster than the physics
  of the kind allows (EMI, a bad frame, a loose contact).
- ``drift``: a slow, persistent walk away from the sensor's long-term baseline while its
  short-term behaviour stays normal is calibration drift or fouling.
The agent adds ``gap`` (no data) itself, also a fault.

A rule is an *event* when the world changed: ``high``/``low`` (graded limits crossed), ``rate``
(a fast rise or fall: a cloudburst, a burst main, a fire) and ``anomaly`` (a departure from the
sensor's own recent normal). Event rules use levels 1..4; fault rules raise level 1 and clear to 0.
"""

from __future__ import annotations

from typing import Final

RULE_NAMES: Final[tuple[str, ...]] = (
    "high", "low", "rate", "spike", "anomaly", "drift", "flatline", "range",
)
FAULT_RULES: Final[frozenset[str]] = frozenset({"range", "flatline", "spike", "drift"})
EVENT_RULES: Final[frozenset[str]] = frozenset({"high", "low", "rate", "anomaly"})

HIGH: Final = 0
LOW: Final = 1
RATE: Final = 2
SPIKE: Final = 3
ANOMALY: Final = 4
DRIFT: Final = 5
FLATLINE: Final = 6
RANGE: Final = 7
N_RULES: Final = len(RULE_NAMES)

#: Most limits a graded rule (high, low, rate rise/fall, anomaly) can have: one per level 1..4.
MAX_LIMITS: Final = 4

#: The order the chain runs the rules in for each sample (and reports one sample's changes in).
CHAIN_ORDER: Final[tuple[int, ...]] = (RANGE, FLATLINE, SPIKE, HIGH, LOW, RATE, ANOMALY, DRIFT)

RULE_CODES: Final[dict[str, int]] = {name: code for code, name in enumerate(RULE_NAMES)}
ALL_RULES_MASK: Final = (1 << N_RULES) - 1


def rule_mask(names: tuple[str, ...] | frozenset[str] | list[str]) -> int:
    """Bit mask selecting the named rules (bit `code` set); unknown names raise ValueError."""
    mask = 0
    for name in names:
        if name not in RULE_CODES:
            raise ValueError(f"unknown rule {name!r}; known: {', '.join(RULE_NAMES)}")
        mask |= 1 << RULE_CODES[name]
    return mask
