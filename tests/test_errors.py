"""The error tree: one root, each class also the built-in it refines, old names kept."""

from __future__ import annotations

import pytest

import relaypolicy
from relaypolicy import errors
from relaypolicy.domains import DomainError
from relaypolicy.fleet.replica import StaleTable
from relaypolicy.iptable import TableFileError
from relaypolicy.postfix.codec import ProtocolError
from relaypolicy.smtpd.passwords import PasswordFileError
from relaypolicy.testing.audit import AuditError
from relaypolicy.testing.scenarios import ScenarioError
from relaypolicy.watch.export import ExportError

BUILTIN = {
    "ConfigError": ValueError,
    "DomainError": ValueError,
    "TableFileError": ValueError,
    "PasswordFileError": ValueError,
    "ScenarioError": ValueError,
    "ProtocolError": ValueError,
    "UsageError": ValueError,
    "ExportError": OSError,
    "AuditError": ConnectionError,
    "StaleTable": RuntimeError,
}


def test_every_error_has_one_root_and_its_builtin() -> None:
    names = set(errors.__all__) - {"RelayPolicyError"}
    assert names == set(BUILTIN)
    for name in names:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.RelayPolicyError), name
        assert issubclass(cls, BUILTIN[name]), name
        assert name in (errors.__doc__ or ""), f"{name} is not drawn in the module docstring"


def test_the_modules_that_raise_them_name_the_same_classes() -> None:
    assert DomainError is errors.DomainError
    assert TableFileError is errors.TableFileError
    assert ProtocolError is errors.ProtocolError
    assert PasswordFileError is errors.PasswordFileError
    assert ScenarioError is errors.ScenarioError
    assert AuditError is errors.AuditError
    assert ExportError is errors.ExportError
    assert StaleTable is errors.StaleTable
    assert relaypolicy.RelayPolicyError is errors.RelayPolicyError


def test_a_bad_domain_is_caught_at_the_root() -> None:
    with pytest.raises(relaypolicy.RelayPolicyError, match="exa mple"):
        relaypolicy.LocalDomainOnly(["exa mple.org"])
