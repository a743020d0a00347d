"""Fleets: one POP-before-SMTP table shared by many mail servers through Redis.

Every ``relaypolicy serve`` keeps a :class:`ReplicaTable`: a local
:class:`~relaypolicy.iptable.ExpiringIpTable` that follows Redis, so a decision never waits
on the network. A replica cut off from Redis for longer than ``max_staleness`` cannot
answer for the clients it does not know: a chain defers (``451 4.3.0``) a relay from them
and still takes mail for its own domains. ``docs/fleet.md`` tells the whole story.
redis-py (the ``redis`` extra) is imported only when a replica connects.
"""

from relaypolicy.fleet.replica import ReplicaTable, StaleTable
from relaypolicy.fleet.urls import StateUrl, parse_state_url

__all__ = ["ReplicaTable", "StaleTable", "StateUrl", "parse_state_url"]
