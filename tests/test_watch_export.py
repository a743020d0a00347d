"""Map exporters: each format's exact bytes, atomic writes, the rate limit, real postmap."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from realservers import require_binary

from relaypolicy.iptable.base import IpEntry
from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.testing import FakeClock
from relaypolicy.watch.export import EXPORT_FORMATS, HEADER, Exporter, ExportError, render

# In no particular order, with a duplicate, an IPv4-mapped address and bracketed IPv6.
ADDRESSES = ["2001:db8::7", "192.0.2.10", "::ffff:192.0.2.9", "192.0.2.9", "[2001:db8::1]"]
NETWORK = "2001:db8:1:2::/64"  # a table with ipv6_prefix=64 has entries like this

EXPECTED = {
    "postfix": f"{HEADER}\n192.0.2.9 OK\n192.0.2.10 OK\n2001:db8::1 OK\n2001:db8::7 OK\n",
    "postfix-cidr": (
        f"{HEADER}\n192.0.2.9 OK\n192.0.2.10 OK\n2001:db8::1 OK\n2001:db8::7 OK\n"
        "2001:db8:1:2::/64 OK\n"
    ),
    "exim": f'{HEADER}\n192.0.2.9\n192.0.2.10\n"2001:db8::1"\n"2001:db8::7"\n"2001:db8:1:2::/64"\n',
    "sendmail": (
        f"{HEADER}\nConnect:192.0.2.9 RELAY\nConnect:192.0.2.10 RELAY\n"
        "Connect:IPv6:2001:db8::1 RELAY\nConnect:IPv6:2001:db8::7 RELAY\n"
    ),
    "plain": "192.0.2.9\n192.0.2.10\n2001:db8::1\n2001:db8::7\n2001:db8:1:2::/64\n",
}


def entries(*addresses: str) -> list[IpEntry]:
    return [IpEntry(address, 100.0, None) for address in addresses]


# --- content ----------------------------------------------------------------------------


@pytest.mark.parametrize("format", EXPORT_FORMATS)
def test_exact_content(format: str) -> None:
    assert render(entries(*ADDRESSES, NETWORK), format) == EXPECTED[format]


@pytest.mark.parametrize("format", EXPORT_FORMATS)
def test_empty_map(format: str) -> None:
    assert render([], format) == ("" if format == "plain" else f"{HEADER}\n")


def test_output_is_the_same_whatever_the_order() -> None:
    for format in EXPORT_FORMATS:
        assert render(reversed(ADDRESSES), format) == render(ADDRESSES, format)


def test_ipv6_is_written_as_the_c_library_prints_it() -> None:
    # Upper case and leading zeros in, the compressed lower-case form out; the deprecated
    # IPv4-compatible form is printed with a dotted quad by inet_ntop(3), as Postfix sees it.
    assert render(["2001:0DB8:0:0:0:0:0:0A"], "plain") == "2001:db8::a\n"
    assert render(["::102:304"], "plain") == "::1.2.3.4\n"


def test_the_table_folds_mapped_addresses_and_the_exporter_writes_them_folded() -> None:
    table = ExpiringIpTable(60, clock=FakeClock())
    table.record("::ffff:198.51.100.4")
    table.record("2001:DB8::5")
    assert render(table.entries(), "sendmail").splitlines()[1:] == [
        "Connect:198.51.100.4 RELAY",
        "Connect:IPv6:2001:db8::5 RELAY",
    ]


def test_unknown_format_and_bad_options() -> None:
    with pytest.raises(ValueError, match="format"):
        render([], "qmail")
    with pytest.raises(ValueError, match="format"):
        Exporter("/tmp/x", "qmail")
    with pytest.raises(ValueError, match="map_type"):
        Exporter("/tmp/x", "exim", map_type="hash")
    with pytest.raises(ValueError, match="map_type"):
        Exporter("/tmp/x", "postfix", map_type="cdb")
    with pytest.raises(ExportError, match="postmap"):
        Exporter("/tmp/x", "postfix", map_type="hash", postmap="/nonexistent/postmap")


def test_networks_left_out_of_postfix_and_sendmail_are_counted(tmp_path: Path) -> None:
    exporter = Exporter(tmp_path / "access", "postfix")
    exporter.update(entries("192.0.2.1", NETWORK))
    assert exporter.skipped == 1
    exporter.maybe_write()
    assert (tmp_path / "access").read_text() == f"{HEADER}\n192.0.2.1 OK\n"


# --- writing ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def test_first_update_is_written_at_once_with_mode_0644(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay"
    exporter = Exporter(path, "plain", clock=clock)
    assert exporter.update(entries("192.0.2.1"))
    assert exporter.maybe_write()
    assert path.read_text() == "192.0.2.1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not exporter.pending


def test_rate_limited_to_once_per_interval(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay"
    exporter = Exporter(path, "plain", clock=clock)
    exporter.update(entries("192.0.2.1"))
    assert exporter.maybe_write()
    exporter.update(entries("192.0.2.1", "192.0.2.2"))
    clock.advance(0.5)
    assert not exporter.maybe_write()  # too soon: held back, still pending
    assert exporter.pending
    exporter.update(entries("192.0.2.1", "192.0.2.2", "192.0.2.3"))  # a burst: one write
    clock.advance(0.4)
    assert not exporter.maybe_write()
    clock.advance(0.1)
    assert exporter.maybe_write()
    assert path.read_text() == "192.0.2.1\n192.0.2.2\n192.0.2.3\n"
    assert exporter.writes == 2


def test_unchanged_content_is_not_rewritten(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay"
    exporter = Exporter(path, "exim", clock=clock)
    exporter.update(entries("192.0.2.1"))
    exporter.maybe_write()
    inode = path.stat().st_ino
    clock.advance(10)
    assert not exporter.update(entries("192.0.2.1"))  # e.g. a login extended an entry
    assert not exporter.maybe_write()
    assert path.stat().st_ino == inode
    assert exporter.writes == 1


def test_rewritten_when_entries_expire(tmp_path: Path, clock: FakeClock) -> None:
    table = ExpiringIpTable(60, clock=clock)
    path = tmp_path / "access"
    exporter = Exporter(path, "postfix", clock=clock)
    table.record("192.0.2.1")
    clock.advance(30)
    table.record("192.0.2.2")
    exporter.update(table.entries())
    exporter.maybe_write()
    assert path.read_text() == f"{HEADER}\n192.0.2.1 OK\n192.0.2.2 OK\n"
    clock.advance(30)  # the first has expired; no login since
    table.expire()
    assert exporter.update(table.entries())
    assert exporter.maybe_write()
    assert path.read_text() == f"{HEADER}\n192.0.2.2 OK\n"
    clock.advance(30)
    table.expire()
    exporter.update(table.entries())
    exporter.maybe_write()
    assert path.read_text() == f"{HEADER}\n"


def test_writes_rename_a_complete_temporary_file_and_leave_none_behind(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay"
    renames: list[tuple[str, str, bytes]] = []
    real_replace = os.replace

    def spy(source: str, target: str) -> None:
        data = Path(source).read_bytes()
        renames.append((os.path.basename(source), os.path.basename(target), data))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    exporter = Exporter(path, "plain", interval=0, clock=clock)
    for n in range(1, 4):
        exporter.update(entries(*(f"192.0.2.{i}" for i in range(n))))
        exporter.maybe_write()
    assert len(renames) == 3
    for source, target, data in renames:
        assert source.startswith(".relay.") and source.endswith(".tmp")
        assert target == "relay"
        assert data.endswith(b"\n")  # complete before the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relay"]


def test_a_failed_write_keeps_the_old_file_and_is_retried(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay"
    exporter = Exporter(path, "plain", clock=clock)
    exporter.update(entries("192.0.2.1"))
    exporter.maybe_write()

    def broken(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    exporter.update(entries("192.0.2.1", "192.0.2.2"))
    clock.advance(1)
    assert not exporter.maybe_write()  # logged and counted, never raised
    assert exporter.errors == 1
    assert exporter.pending
    assert path.read_text() == "192.0.2.1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relay"]
    monkeypatch.undo()
    clock.advance(0.5)
    assert not exporter.maybe_write()  # retries are rate-limited too
    clock.advance(0.5)
    assert exporter.maybe_write()
    assert path.read_text() == "192.0.2.1\n192.0.2.2\n"


def test_a_reader_sees_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "relay"
    contents = [render(entries(*(f"10.0.{n}.{i}" for i in range(50))), "plain") for n in range(50)]
    exporter = Exporter(path, "plain", interval=0)
    exporter.update([])
    exporter.write()
    allowed = {"", *contents}
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for text in contents:
            exporter.update(text.split())
            exporter.maybe_write()
    finally:
        done.set()
        reader.join()
    assert seen <= allowed


def test_close_clears_the_map(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay"
    exporter = Exporter(path, "sendmail", clock=clock)
    exporter.update(entries("192.0.2.1"))
    exporter.maybe_write()
    exporter.close()
    assert path.read_text() == f"{HEADER}\n"
    exporter.update(entries("192.0.2.1"))
    exporter.close(clear=False)
    assert path.read_text() == f"{HEADER}\n"


# --- real postmap -----------------------------------------------------------------------


@pytest.fixture
def postmap(tmp_path: Path) -> tuple[str, Path]:
    """The postmap binary and a Postfix configuration directory it accepts."""
    binary = require_binary("postmap", package="postfix")
    config = tmp_path / "postfix-config"
    config.mkdir()
    main_cf = config / "main.cf"
    main_cf.write_text("")  # postmap only needs one to exist
    settle(main_cf)
    return binary, config


def settle(path: Path) -> None:
    """Backdate ``path``: Postfix waits for a table file changed in the last second."""
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))


def query(binary: str, config: Path, table: str, key: str) -> str | None:
    result = subprocess.run(
        [binary, "-c", str(config), "-q", key, table], capture_output=True, text=True, check=False
    )
    if result.returncode == 1:
        return None
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.real
@pytest.mark.parametrize("map_type", ["hash", "btree"])
def test_postfix_indexed_map_through_real_postmap(
    tmp_path: Path, clock: FakeClock, postmap: tuple[str, Path], map_type: str
) -> None:
    binary, config = postmap
    path = tmp_path / "relay-access"
    exporter = Exporter(
        path, "postfix", map_type=map_type, postmap=binary, postmap_config=config, clock=clock
    )
    exporter.update(entries("192.0.2.7", "::ffff:192.0.2.8", "2001:db8::7"))
    assert exporter.maybe_write()
    table = f"{map_type}:{path}"
    assert query(binary, config, table, "192.0.2.7") == "OK"
    assert query(binary, config, table, "192.0.2.8") == "OK"
    assert query(binary, config, table, "2001:db8::7") == "OK"
    assert query(binary, config, table, "192.0.2.9") is None
    database = Path(f"{path}.db")
    assert database.stat().st_mtime >= path.stat().st_mtime  # no "older than source"
    assert stat.S_IMODE(database.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "postfix-config", "relay-access", "relay-access.db"
    ]  # fmt: skip

    database_inode = database.stat().st_ino
    clock.advance(1)
    exporter.update(entries("2001:db8::7"))  # 192.0.2.7 and .8 expired
    assert exporter.maybe_write()
    assert database.stat().st_ino != database_inode  # replaced by rename, not rewritten
    assert query(binary, config, table, "192.0.2.7") is None
    assert query(binary, config, table, "2001:db8::7") == "OK"
    assert path.read_text() == f"{HEADER}\n2001:db8::7 OK\n"


def test_postmap_failure_leaves_the_old_map_and_no_temporary_files(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "relay-access"
    path.write_text("old\n")
    Path(f"{path}.db").write_text("old database\n")
    exporter = Exporter(path, "postfix", map_type="hash", postmap="false", clock=clock)
    exporter.update(entries("192.0.2.7"))
    with pytest.raises(ExportError, match=r"false hash:.* failed"):
        exporter.write()
    clock.advance(1)
    assert not exporter.maybe_write()  # logged and counted, not raised
    assert exporter.errors == 1
    assert path.read_text() == "old\n"
    assert Path(f"{path}.db").read_text() == "old database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relay-access", "relay-access.db"]


@pytest.mark.real
def test_postfix_texthash_and_cidr_maps_read_by_real_postmap(
    tmp_path: Path, postmap: tuple[str, Path]
) -> None:
    binary, config = postmap
    access = tmp_path / "access"
    exporter = Exporter(access, "postfix")
    exporter.update(entries("192.0.2.7", "2001:db8::7"))
    exporter.write()
    settle(access)
    assert query(binary, config, f"texthash:{access}", "2001:db8::7") == "OK"
    assert query(binary, config, f"texthash:{access}", "192.0.2.7") == "OK"

    cidr = tmp_path / "access.cidr"
    exporter = Exporter(cidr, "postfix-cidr")
    exporter.update(entries("192.0.2.7", NETWORK))
    exporter.write()
    settle(cidr)
    assert query(binary, config, f"cidr:{cidr}", "2001:db8:1:2::99") == "OK"
    assert query(binary, config, f"cidr:{cidr}", "2001:db8:1:3::99") is None
    assert query(binary, config, f"cidr:{cidr}", "192.0.2.7") == "OK"


def test_temporaries_a_killed_process_left_are_removed_at_the_first_write(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "relay"
    ours = [".relay.k3j_9x2a.tmp", ".relay.abcdefgh.tmp"]  # write_temp's own pattern
    others = [".relay.toolong123.tmp", ".other.abcdefgh.tmp", "relay.tmp"]
    for name in ours + others:
        (tmp_path / name).write_text("left by a kill -9 between write and rename")
    exporter = Exporter(path, "plain", clock=clock)
    exporter.update(entries("192.0.2.1"))
    assert exporter.maybe_write()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "relay"])
    # Once only: a temporary appearing later is another writer's, in flight.
    (tmp_path / ours[0]).write_text("in flight")
    exporter.update(entries("192.0.2.2"))
    clock.advance(exporter.interval)
    assert exporter.maybe_write()
    assert (tmp_path / ours[0]).exists()
