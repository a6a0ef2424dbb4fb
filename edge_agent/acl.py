"""Mosquitto ACL blocks that bind each agent's username to its own topics, from its config.

`python -m edge_agent.acl agent1.toml agent2.toml ... >> /etc/mosquitto/lifeline.acl` prints one
block per agent (username = agent id): it may write only its own retained status, its own
summaries and the alert topic of each sensor in its config (`P/alert/{district}/{site}/{sensor}`),
and read raw blocks. So the broker itself refuses an alert an agent publishes for another agent's
sensor; the gateway's ownership check (`gateway.registry`) is the second line (docs/threat-model.md).
A sensor added to an agent needs its block regenerated and Mosquitto reloaded (`systemctl reload
mosquitto`, SIGHUP): until then the broker refuses that sensor's alerts (the agent keeps them in
its outbox and counts the refusals).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edge_agent.config import AgentConfig, load_agent_config
from lifeline.contract import alert_topic, status_topic, summary_topic
from lifeline.errors import LifelineError


def agent_acl_block(config: AgentConfig) -> str:
    """The ACL block of one agent: its own status, summaries and sensors' alert topics."""
    agent = config.agent
    prefix = config.mqtt.prefix
    lines = [
        f"# agent {agent.id} ({agent.district}/{agent.township}): {len(config.sensor)} sensor(s)",
        f"user {agent.id}",
        f"topic write {status_topic(prefix, agent.id)}",
        f"topic write {summary_topic(prefix, agent.id)}",
        *(
            f"topic write {alert_topic(prefix, agent.district, sensor.site, sensor.id)}"
            for sensor in config.sensor
        ),
        f"topic read {prefix}/raw/#",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the blocks of the agent configs named on the command line."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths or paths[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr if not paths else sys.stdout)
        return 0 if paths else 2
    try:
        blocks = [agent_acl_block(load_agent_config(path)) for path in paths]
    except LifelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(blocks), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
