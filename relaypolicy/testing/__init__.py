"""Helpers for testing code that uses relaypolicy, without mocks or sleeping."""

from relaypolicy.testing.clock import FakeClock

__all__ = ["FakeClock"]
