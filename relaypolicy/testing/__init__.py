"""Helpers for testing code that uses relaypolicy, without mocks or sleeping.

- :class:`FakeClock`: time that moves only when told to;
- :func:`relay_probes` / :func:`probe_battery`: the relay-abuse battery (nmap's 16 probes,
  routing tricks, address literals, look-alikes, the null sender), each a :class:`Probe`
  with a name and the reason it is a trick;
- :func:`assert_not_open_relay` and :func:`assert_decision`: assertions for tests;
- ``relaypolicy.testing.scenarios``: scenario files (``relaypolicy test``);
- ``relaypolicy.testing.audit``: the audit, in process or over SMTP (``relaypolicy audit``);
- ``relaypolicy.testing.strategies``: Hypothesis strategies (imports Hypothesis);
- ``relaypolicy.testing.pytest_plugin``: fixtures, loaded by pytest automatically.
- ``relaypolicy.testing.fuzz``: the fuzz harness (``python -m relaypolicy.testing.fuzz``).
"""

from relaypolicy.testing.assertions import (
    Expectation,
    assert_decision,
    assert_not_open_relay,
    probe_policy,
)
from relaypolicy.testing.clock import FakeClock
from relaypolicy.testing.probes import Probe, probe_battery, relay_probes

__all__ = [
    "Expectation",
    "FakeClock",
    "Probe",
    "assert_decision",
    "assert_not_open_relay",
    "probe_battery",
    "probe_policy",
    "relay_probes",
]
