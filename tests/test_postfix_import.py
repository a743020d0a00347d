"""``relaypolicy postfix import``: Postfix's relay settings translated, or refused with a reason.

Table-driven: each case is ``postconf`` output (``name = value`` lines, ``master.cf``
service lines) and what the translation must be -- the chain, the ports, the domains and
networks -- or which settings it must refuse. Every generated file is loaded with
:func:`relaypolicy.config.parse_config`, as ``relaypolicy serve`` would load it. The five
realistic pairs under ``tests/postfix_configs`` are imported through the real ``postconf``
too, when Postfix is installed.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from realservers import require_binary

from relaypolicy.config import parse_config
from relaypolicy.errors import ConfigError
from relaypolicy.postfix.importer import Refusal, translate
from relaypolicy.postfix.postconf import expand, parse_postconf, split_list

CONFIGS = Path(__file__).resolve().parent / "postfix_configs"
FIXTURES = sorted(path.name for path in CONFIGS.iterdir() if path.is_dir())

# What every case starts from: the host-dependent values postconf -x would print.
BASE = """\
myhostname = mx.example.org
mydestination = $myhostname, example.org
mynetworks = 127.0.0.0/8 [::1]/128
compatibility_level = 3.6
"""

FILES = {
    "/etc/postfix/sender_logins": "taro@example.org taro\n@example.org  postmaster, taro\n",
    "/etc/postfix/clientcerts": "# fingerprint            owner\n" + "AB:" * 31 + "CD  laptop\n",
    "/etc/postfix/bad_logins": "taro   taro\n",
}


def read_file(path: str) -> str:
    try:
        return FILES[path]
    except KeyError:
        raise FileNotFoundError(2, "No such file or directory", path) from None


class Imported(NamedTuple):
    data: dict[str, Any]
    refusals: list[Refusal]
    notes: list[str]
    toml: str


def imported(text: str, base: str = BASE) -> Imported:
    result = translate(parse_postconf(base + text), source="test", read_file=read_file)
    data = tomllib.loads(result.toml)
    if data.get("domains", {}).get("local") or data.get("domains", {}).get("relay"):
        parse_config(data, source="test")  # loads as relaypolicy serve would
    return Imported(data, result.refusals, result.notes, result.toml)


class Case(NamedTuple):
    name: str
    text: str
    steps: list[str]
    ports: dict[str, list[str]] | None = None


# fmt: off
TRANSLATED = [
    Case("permit_mynetworks, reject_unauth_destination",
         "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n",
         ["trusted_networks", "local_domains"]),
    Case("Debian's default, SASL off: permit_sasl_authenticated never matches",
         "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated "
         "defer_unauth_destination\n",
         ["trusted_networks", "local_domains"]),
    Case("SASL on",
         "smtpd_sasl_auth_enable = yes\nsmtpd_relay_restrictions = permit_mynetworks, "
         "permit_sasl_authenticated, reject_unauth_destination\n",
         ["trusted_networks", "sasl_permit", "local_domains"]),
    Case("compatibility_level 0 style: the gate in smtpd_recipient_restrictions",
         "smtpd_relay_restrictions =\nsmtpd_recipient_restrictions = permit_mynetworks, "
         "reject_unauth_destination\n",
         ["trusted_networks", "local_domains"]),
    Case("both lists, the same permits",
         "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
         "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n",
         ["trusted_networks", "local_domains"]),
    Case("nested lists: only the clients both permit",
         "smtpd_sasl_auth_enable = yes\n"
         "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, "
         "reject_unauth_destination\n"
         "smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination\n",
         ["sasl_permit", "local_domains"]),
    Case("permit at the end of a list is its end",
         "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination, permit\n",
         ["trusted_networks", "local_domains"]),
    Case("items after reject are never reached",
         "smtpd_relay_restrictions = permit_mynetworks, reject, check_recipient_access "
         "pcre:/x\n",
         ["trusted_networks"]),
    Case("permit_tls_clientcerts with relay_clientcerts (hash source read)",
         "relay_clientcerts = hash:/etc/postfix/clientcerts\n"
         "smtpd_relay_restrictions = permit_tls_clientcerts, reject_unauth_destination\n",
         ["client_certificate", "local_domains"]),
    Case("check_client_access on a POP-before-SMTP map",
         "smtpd_relay_restrictions = permit_mynetworks, check_client_access "
         "hash:/etc/postfix/pop-before-smtp, reject_unauth_destination\n",
         ["trusted_networks", "pop_before_smtp", "local_domains"]),
    Case("submission: -o overrides make a port chain (587)",
         "submission inet n - y - - smtpd -o smtpd_sasl_auth_enable=yes "
         "-o smtpd_relay_restrictions= "
         "-o {smtpd_recipient_restrictions=permit_sasl_authenticated, reject}\n",
         ["trusted_networks", "local_domains"], {"587": ["sasl_permit"]}),
    Case("submissions and smtps are 465; HOST:PORT is its port",
         "submissions inet n - y - - smtpd\n -o smtpd_sasl_auth_enable=yes\n"
         " -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
         "127.0.0.1:2525 inet n - n - - smtpd "
         "-o smtpd_relay_restrictions=reject_unauth_destination\n",
         ["trusted_networks", "local_domains"],
         {"465": ["sasl_permit"], "2525": ["local_domains"]}),
    Case("postconf -P overrides, expanded by postconf",
         "submission inet n - y - - smtpd\n"
         "submission/inet/smtpd_sasl_auth_enable = yes\n"
         "submission/inet/smtpd_relay_restrictions = permit_sasl_authenticated, reject\n",
         ["trusted_networks", "local_domains"], {"587": ["sasl_permit"]}),
    Case("reject_sender_login_mismatch where login is required: sasl_required",
         "smtpd_sender_login_maps = hash:/etc/postfix/sender_logins\n"
         "mua_sender = reject_sender_login_mismatch\n"
         "submission inet n - y - - smtpd -o smtpd_sasl_auth_enable=yes "
         "-o smtpd_sender_restrictions=$mua_sender "
         "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n",
         ["trusted_networks", "local_domains"], {"587": ["sasl_required"]}),
    Case("a service without relay overrides uses the main chain",
         "smtp inet n - y - - smtpd -o syslog_name=postfix/smtp\n",
         ["trusted_networks", "local_domains"]),
]
# fmt: on


@pytest.mark.parametrize("case", TRANSLATED, ids=[case.name for case in TRANSLATED])
def test_translated(case: Case) -> None:
    result = imported(case.text)
    assert result.refusals == []
    assert result.data["chain"]["steps"] == case.steps
    assert result.data["chain"].get("ports") == case.ports


def test_domains_networks_and_their_comments() -> None:
    result = imported(
        "relay_domains = relay.test, .relay.test, .sub.example.org, example.org\n"
        "mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.0.2.0/24\n"
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n",
        base="myhostname = mx.example.org\nmydestination = $myhostname, example.org\n",
    )
    assert result.refusals == []
    domains = result.data["domains"]
    assert domains["local"] == ["mx.example.org", "example.org"]
    # relay.test (and .relay.test): subdomains too; .sub.example.org is inside example.org,
    # which relay_domains lists with its subdomains.
    assert domains["relay"] == ["relay.test", "example.org"]
    assert result.data["networks"]["trusted"] == ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]
    assert '"mx.example.org",  # mydestination' in result.toml
    assert (
        "# smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination" in result.toml
    )


def test_address_literals_and_both_idn_forms() -> None:
    result = imported(
        "mydestination = example.org, [192.0.2.1], 例え.jp, xn--r8jz45g.jp\n"
        "smtpd_relay_restrictions = reject_unauth_destination\n"
    )
    assert result.refusals == []
    assert result.data["domains"]["local"] == ["example.org", "[192.0.2.1]", "例え.jp",
                                               "xn--r8jz45g.jp"]  # fmt: skip


def test_relay_domains_matched_exactly_become_local() -> None:
    result = imported(
        "parent_domain_matches_subdomains = debug_peer_list\nrelay_domains = relay.test\n"
        "smtpd_relay_restrictions = reject_unauth_destination\n"
    )
    assert result.refusals == []
    assert "relay.test" in result.data["domains"]["local"]
    assert result.data["domains"]["relay"] == []


def test_defer_unauth_destination_is_noted() -> None:
    result = imported("smtpd_relay_restrictions = permit_mynetworks, defer_unauth_destination\n")
    assert result.refusals == []
    assert any("454 4.7.1" in note for note in result.notes)
    assert "454 4.7.1" in result.toml


def test_sender_logins_are_read_from_the_map() -> None:
    result = imported(TRANSLATED[13].text)
    assert result.data["smtp_auth"]["sender_logins"] == {
        "taro@example.org": ["taro"],
        "@example.org": ["postmaster", "taro"],
    }
    inline = imported(
        "smtpd_sender_login_maps = inline:{ taro@example.org=taro, { @example.org = root } }\n"
        + TRANSLATED[13].text.split("\n", 1)[1]
    )
    assert inline.refusals == []
    assert inline.data["smtp_auth"]["sender_logins"] == {
        "taro@example.org": ["taro"],
        "@example.org": ["root"],
    }


def test_client_certificates_are_read_from_the_map() -> None:
    result = imported(TRANSLATED[8].text)
    assert result.data["client_certificates"]["fingerprints"] == ["AB:" * 31 + "CD"]
    assert any("postmap" in note for note in result.notes)


def test_tls_auth_only_means_require_tls() -> None:
    result = imported(
        "submission inet n - y - - smtpd -o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes "
        "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
    )
    assert result.data["smtp_auth"]["require_tls"] is True


def test_an_implicit_tls_port_keeps_require_tls_without_tls_auth_only() -> None:
    """Debian's submissions (465) template has no smtpd_tls_auth_only: its port is TLS from
    the first byte. It must not turn require_tls off for 587, where AUTH needs STARTTLS."""
    result = imported(
        "submission inet n - y - - smtpd -o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes "
        "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
        "submissions inet n - y - - smtpd -o smtpd_tls_wrappermode=yes "
        "-o smtpd_sasl_auth_enable=yes "
        "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
    )
    assert result.data["smtp_auth"]["require_tls"] is True
    # A port without TLS that offers AUTH in the clear still turns it off (never wider).
    clear = imported(
        "submission inet n - y - - smtpd -o smtpd_sasl_auth_enable=yes "
        "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
        "submissions inet n - y - - smtpd -o smtpd_tls_wrappermode=yes "
        "-o smtpd_sasl_auth_enable=yes "
        "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
    )
    assert "require_tls" not in clear.data.get("smtp_auth", {})


class Refused(NamedTuple):
    name: str
    text: str
    parameter: str
    value: str  # a part of the refused value
    reason: str  # a part of the reason


# fmt: off
REFUSED = [
    Refused("check_recipient_access", "smtpd_relay_restrictions = permit_mynetworks, "
            "check_recipient_access pcre:/etc/postfix/ra.pcre, reject_unauth_destination\n",
            "smtpd_relay_restrictions", "pcre:/etc/postfix/ra.pcre", "may permit a relay"),
    Refused("a restriction class", "smtpd_restriction_classes = friends\nfriends = permit\n"
            "smtpd_relay_restrictions = friends, reject_unauth_destination\n",
            "smtpd_relay_restrictions", "friends", "restriction class"),
    Refused("permit mid-list", "smtpd_relay_restrictions = permit_mynetworks, permit, "
            "reject_unauth_destination\n", "smtpd_relay_restrictions", "permit",
            "before the end"),
    Refused("a reject-only check", "smtpd_relay_restrictions = reject_non_fqdn_recipient, "
            "permit_mynetworks, reject_unauth_destination\n", "smtpd_relay_restrictions",
            "reject_non_fqdn_recipient", "not a relay decision"),
    Refused("a check after the destination", "smtpd_recipient_restrictions = "
            "reject_unauth_destination, check_policy_service unix:private/spf\n",
            "smtpd_recipient_restrictions", "check_policy_service unix:private/spf",
            "after the destination check"),
    Refused("check_client_access on another map", "smtpd_relay_restrictions = "
            "check_client_access hash:/etc/postfix/friends, reject_unauth_destination\n",
            "smtpd_relay_restrictions", "hash:/etc/postfix/friends", "may permit"),
    Refused("mynetworks in a table", "mynetworks = 127.0.0.1, hash:/etc/postfix/network_table\n",
            "mynetworks", "hash:/etc/postfix/network_table", "lookup table"),
    Refused("mynetworks negated", "mynetworks = !192.0.2.1, 192.0.2.0/24\n",
            "mynetworks", "!192.0.2.1", "negation"),
    Refused("mynetworks host bits", "mynetworks = 192.0.2.1/24\n", "mynetworks",
            "192.0.2.1/24", "host bits"),
    Refused("mydestination in a table", "mydestination = $myhostname, hash:/etc/postfix/local\n",
            "mydestination", "hash:/etc/postfix/local", "lookup table"),
    Refused("a subdomain pattern alone", "relay_domains = .relay.test\n", "relay_domains",
            ".relay.test", "not relay.test itself"),
    Refused("an IDN in one form only", "relay_domains = 例え.jp\n", "relay_domains", "例え.jp",
            "xn--r8jz45g.jp"),
    Refused("an unreadable sender map", "smtpd_sender_login_maps = pcre:/etc/postfix/l.pcre\n"
            "submission inet n - y - - smtpd -o smtpd_sasl_auth_enable=yes "
            "-o smtpd_recipient_restrictions=reject_sender_login_mismatch,"
            "permit_sasl_authenticated,reject\n", "smtpd_sender_login_maps", "pcre:", "reads"),
    Refused("a bare user in a sender map",
            "smtpd_sender_login_maps = texthash:/etc/postfix/bad_logins\n"
            "submission inet n - y - - smtpd -o smtpd_sasl_auth_enable=yes "
            "-o smtpd_recipient_restrictions=reject_sender_login_mismatch,"
            "permit_sasl_authenticated,reject\n", "smtpd_sender_login_maps", "taro taro",
            "user@domain"),
    Refused("reject_sender_login_mismatch on port 25", "smtpd_sasl_auth_enable = yes\n"
            "smtpd_sender_login_maps = hash:/etc/postfix/sender_logins\n"
            "smtpd_sender_restrictions = reject_sender_login_mismatch\n"
            "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination\n",
            "smtpd_sender_login_maps", "sender_logins", "sasl_required"),
    Refused("a certificate digest that is not pinned", "smtpd_tls_fingerprint_digest = md5\n"
            "relay_clientcerts = hash:/etc/postfix/clientcerts\n"
            "smtpd_relay_restrictions = permit_tls_clientcerts, reject_unauth_destination\n",
            "smtpd_tls_fingerprint_digest", "md5", "SHA-256"),
    Refused("lists permitting different clients", "smtpd_sasl_auth_enable = yes\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            "smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination\n",
            "smtpd_relay_restrictions", "permit_sasl_authenticated", "not one inside the other"),
    Refused("an open relay", "smtpd_relay_restrictions = permit\n", "smtpd_relay_restrictions",
            "permit", "open relay"),
    Refused("a per-port mynetworks", "submission inet n - y - - smtpd -o mynetworks=10.0.0.0/8 "
            "-o smtpd_relay_restrictions=permit_mynetworks,reject\n",
            "submission/inet: mynetworks", "10.0.0.0/8", "every port"),
    Refused("a pass service with overrides", "smtpd pass - - y - - smtpd "
            "-o smtpd_relay_restrictions=permit_mynetworks,reject\n", "smtpd/pass", "",
            "which port"),
    Refused("a conditional expansion", "smtpd_relay_restrictions = ${x?permit}\n",
            "smtpd_relay_restrictions", "${x?permit}", "conditional"),
    Refused("a parameter the output lacks", "smtpd_relay_restrictions = $mua_relay, "
            "reject_unauth_destination\n", "smtpd_relay_restrictions", "$mua_relay",
            "$mua_relay"),
]
# fmt: on


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_refused(case: Refused) -> None:
    result = imported(case.text)
    matching = [
        r
        for r in result.refusals
        if r.parameter == case.parameter and case.value in r.value and case.reason in r.reason
    ]
    assert matching, result.refusals
    # Every refusal is in the file too, as a comment: nothing silently dropped.
    for refusal in result.refusals:
        assert f"#   {' '.join(str(refusal).split())}" in result.toml


def test_mynetworks_from_mynetworks_style_needs_the_host() -> None:
    result = imported(
        "mynetworks_style = subnet\nsmtpd_relay_restrictions = permit_mynetworks, "
        "reject_unauth_destination\n",
        base="compatibility_level = 3.6\nmyhostname = mx.example.org\n"
        "mydestination = example.org\n",
    )
    (refusal,) = result.refusals
    assert refusal.parameter == "mynetworks"
    assert "mynetworks_style = subnet" in refusal.value
    assert "--config-directory" in refusal.reason
    assert result.data["networks"]["trusted"] == []  # nobody trusted: stricter, not wider


def test_a_host_dependent_default_is_refused() -> None:
    result = imported(
        "compatibility_level = 3.6\nsmtpd_relay_restrictions = reject_unauth_destination\n",
        base="",
    )
    assert [r.parameter for r in result.refusals] == ["mydestination", "mydestination"]
    assert "$myhostname" in result.refusals[0].reason


def test_defaults_that_depend_on_the_compatibility_level_are_not_guessed() -> None:
    """Below level 2 relay_domains defaults to $mydestination (and at level 0
    smtpd_relay_restrictions is empty): without them in the output, the import asks."""
    base = "myhostname = mx.example.org\nmydestination = example.org\nmynetworks = 127.0.0.1\n"
    old = imported("compatibility_level = 1\n", base=base)
    assert {r.parameter for r in old.refusals} == {"relay_domains"}
    none = imported("", base=base)
    assert {r.parameter for r in none.refusals} == {"relay_domains", "smtpd_relay_restrictions"}
    new = imported("compatibility_level = 3.6\n", base=base)
    assert new.refusals == []


def test_refused_items_never_widen_the_chain() -> None:
    """A list with refused items keeps its translated part: nobody gains a permit."""
    result = imported(REFUSED[0].text)
    assert result.data["chain"]["steps"] == ["trusted_networks", "local_domains"]


# --- the postconf output parser ---------------------------------------------------------


def test_split_list_keeps_braces_whole() -> None:
    assert split_list(
        "a, b c,{ d, e }, check_policy_service { inet:x:1, default_action=DEFER }"
    ) == [
        "a",
        "b",
        "c",
        "{ d, e }",
        "check_policy_service",
        "{ inet:x:1, default_action=DEFER }",
    ]
    with pytest.raises(ConfigError, match="unbalanced"):
        split_list("a, { b")


def test_expand() -> None:
    params = {"a": "x $b", "b": "${c}y", "c": "$(d)", "d": "z"}
    assert expand("$a.$b", params) == "x zy.zy"
    with pytest.raises(KeyError):
        expand("$nothere", params)
    with pytest.raises(ConfigError, match="loop"):
        expand("$a", {"a": "$a"})


def test_parse_postconf_mixed_output() -> None:
    text = (
        "# postconf -n\nmyhostname = mx.example.org\nrelay_domains =\n"
        "submission inet  n - y - - smtpd\n    -o syslog_name=postfix/submission\n"
        "    -o {smtpd_recipient_restrictions = permit_sasl_authenticated, reject}\n"
        "submission/inet/smtpd_sasl_auth_enable = yes\n"
    )
    parsed = parse_postconf(text)
    assert parsed.params == {"myhostname": "mx.example.org", "relay_domains": ""}
    (service,) = parsed.services
    assert service.name == "submission" and service.command == "smtpd"
    assert service.overrides == {
        "syslog_name": "postfix/submission",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_sasl_auth_enable": "yes",
    }
    with pytest.raises(ConfigError, match=r"x:2: not a master\.cf service line"):
        parse_postconf("a = b\nthis is not postconf\n", source="x")


# --- the five realistic configurations, through the real postconf and the command ------


def run_import(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaypolicy", "postfix", "import", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_imports_through_postconf(name: str, tmp_path: Path) -> None:
    require_binary("postconf", package="postfix")
    done = run_import("--config-directory", str(CONFIGS / name))
    out = tmp_path / "imported.toml"
    out.write_text(done.stdout, encoding="utf-8")
    from relaypolicy.config import load_config

    config = load_config(out)
    if name == "untranslatable":
        assert done.returncode == 1, done.stderr
        refused = done.stderr
        for what in ("check_recipient_access regexp:", "from_partners", "= permit:", "cidr:"):
            assert what in refused, refused
        assert "(--allow-partial to accept it)" in refused
        partial = run_import("--config-directory", str(CONFIGS / name), "--allow-partial")
        assert partial.returncode == 0 and partial.stdout == done.stdout
    else:
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
    assert config.chain[-1] == "local_domains"


def test_import_from_saved_output(tmp_path: Path) -> None:
    saved = tmp_path / "postconf.txt"
    saved.write_text(BASE + "smtpd_relay_restrictions = permit_mynetworks, reject\n")
    done = run_import("--postconf-output", str(saved))
    assert done.returncode == 0, done.stderr
    assert 'steps = ["trusted_networks"]' in done.stdout
    missing = run_import("--postconf-output", str(tmp_path / "none.txt"))
    assert missing.returncode == 66
    assert missing.stderr.startswith("relaypolicy postfix import: error: ")
    saved.write_text("this is not postconf output at all\n")
    assert run_import("--postconf-output", str(saved)).returncode == 78
