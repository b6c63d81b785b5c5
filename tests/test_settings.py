"""Unit tests for p2pd/settings.py: defaults < config file < flags, and validation."""

from __future__ import annotations

import dataclasses

import pytest

from p2pd.protocol import DEFAULT_MAX_FRAME_BYTES
from p2pd.config import load_file
from p2pd.settings import LOG_LEVELS, SETTING_NAMES, ConfigError, Settings, build, parse_host_port

# ---------------------------------------------------------------------------- defaults


def test_defaults():
    s = Settings()
    assert s.validate() is s
    assert (s.port, s.pub_port, s.host, s.advertise, s.name) == (5000, None, "0.0.0.0", None, None)
    assert s.log_level == "info" and s.join == []
    assert (s.heartbeat_interval_s, s.heartbeat_timeout_s, s.gossip_interval_s) == (2.0, 5.0, 10.0)
    assert (s.retry_min_s, s.retry_max_s, s.forget_after_s) == (1.0, 30.0, 3600.0)
    assert (s.max_frame_bytes, s.max_peers, s.inbox_size) == (DEFAULT_MAX_FRAME_BYTES, 256, 1000)


def test_join_default_is_not_shared():
    a, b = Settings(), Settings()
    a.join.append("h:1")
    assert b.join == []


def test_setting_names_match_fields():
    assert SETTING_NAMES == {f.name for f in dataclasses.fields(Settings)}
    assert "heartbeat_timeout_s" in SETTING_NAMES and "bogus" not in SETTING_NAMES


@pytest.mark.parametrize("port, pub_port, expected", [(5000, None, 5001), (0, None, 0), (5000, 6000, 6000), (5000, 0, 0), (7, 9, 9)])
def test_effective_pub_port(port, pub_port, expected):
    assert Settings(port=port, pub_port=pub_port).effective_pub_port == expected


# ---------------------------------------------------------------------------- build: precedence


def test_build_with_nothing_gives_defaults():
    assert build({}, {}) == Settings()


def test_file_overrides_defaults_and_flags_override_file():
    s = build({"port": 6000, "name": "filename", "log_level": "debug"}, {"port": 7000, "name": None, "log_level": None})
    assert s.port == 7000  # flag wins
    assert s.name == "filename"  # None means "flag not given"
    assert s.log_level == "debug"
    assert s.host == "0.0.0.0"  # default kept


def test_empty_tuple_override_means_not_given():
    assert build({"join": ["a:1"]}, {"join": ()}).join == ["a:1"]


def test_join_lists_are_merged_file_first():
    s = build({"join": ["a:1", "b:2"]}, {"join": ["c:3"]})
    assert s.join == ["a:1", "b:2", "c:3"]


def test_join_from_flags_only_and_from_file_only():
    assert build({}, {"join": ["c:3"]}).join == ["c:3"]
    assert build({"join": ["a:1"]}, {"join": []}).join == ["a:1"]


def test_build_does_not_mutate_inputs():
    file_values = {"join": ["a:1"]}
    overrides = {"join": ["b:2"], "port": 1}
    build(file_values, overrides)
    assert file_values == {"join": ["a:1"]} and overrides == {"join": ["b:2"], "port": 1}


def test_build_unknown_key_is_config_error():
    with pytest.raises(ConfigError, match="bogus"):
        build({"bogus": 1}, {})


def test_build_validates():
    with pytest.raises(ConfigError, match="log_level"):
        build({}, {"log_level": "loud"})
    with pytest.raises(ConfigError, match="heartbeat_timeout_s must be larger"):
        build({"heartbeat_timeout_s": 2.0}, {"heartbeat_interval_s": 3.0})


# ---------------------------------------------------------------------------- validation


def invalid(match: str, **kw):
    with pytest.raises(ConfigError, match=match):
        Settings(**kw).validate()


@pytest.mark.parametrize("value", [-1, 65536, True, "5000", 5000.0, None])
def test_bad_port(value):
    invalid("port must be 0-65535", port=value)


@pytest.mark.parametrize("value", [-1, 65536, False, "5001", 1.5])
def test_bad_pub_port(value):
    invalid("pub_port must be 0-65535", pub_port=value)


@pytest.mark.parametrize("value", [0, 65535])
def test_port_limits_accepted(value):
    assert Settings(port=value, pub_port=1, key_port=2).validate().port == value
    if value:
        invalid("default key port", port=value, pub_port=1)


def test_pub_port_must_differ_from_port():
    invalid("pub_port must differ", port=5000, pub_port=5000)
    assert Settings(port=0, pub_port=0).validate().pub_port == 0  # both picked by the OS


@pytest.mark.parametrize("level", ["INFO", "trace", "", None, 10])
def test_bad_log_level(level):
    invalid("log_level must be one of", log_level=level)


@pytest.mark.parametrize("level", LOG_LEVELS)
def test_log_levels_accepted(level):
    assert Settings(log_level=level).validate().log_level == level


TIME_FIELDS = ["heartbeat_interval_s", "heartbeat_timeout_s", "gossip_interval_s", "retry_min_s", "retry_max_s", "forget_after_s"]


@pytest.mark.parametrize("name", TIME_FIELDS)
@pytest.mark.parametrize("value", [0, -1, -0.5, True, "5", None])
def test_bad_durations(name, value):
    invalid(f"{name} must be a positive number of seconds", **{name: value})


@pytest.mark.parametrize("name", ["gossip_interval_s", "retry_min_s", "retry_max_s", "forget_after_s"])
def test_durations_accept_ints_and_floats(name):
    assert getattr(Settings(**{name: 3}).validate(), name) == 3
    assert getattr(Settings(**{name: 0.25}).validate(), name) == 0.25


def test_timeout_must_exceed_interval():
    invalid("heartbeat_timeout_s must be larger", heartbeat_interval_s=2.0, heartbeat_timeout_s=2.0)
    invalid("heartbeat_timeout_s must be larger", heartbeat_interval_s=3.0, heartbeat_timeout_s=2.0)
    assert Settings(heartbeat_interval_s=2.0, heartbeat_timeout_s=2.01).validate()


@pytest.mark.parametrize("name", ["max_frame_bytes", "max_peers", "inbox_size"])
@pytest.mark.parametrize("value", [0, -1, True, 1.0, "10", None])
def test_bad_positive_ints(name, value):
    invalid(f"{name} must be a positive integer", **{name: value})


@pytest.mark.parametrize("value", [1, 2])
def test_an_active_view_below_three_is_refused_with_why(value):
    invalid("active_view must be at least 3", active_view=value)
    invalid("separate rings", active_view=value)


def test_active_view_limits_accepted():
    assert Settings(active_view=3).validate().active_view == 3
    assert Settings(active_view=16).validate().active_view == 16
    invalid("active_view must be at most 16", active_view=17)


@pytest.mark.parametrize("join", ["a:1", ("a:1",), [1], ["a:1", None]])
def test_join_must_be_list_of_strings(join):
    invalid("join must be a list", join=join)


@pytest.mark.parametrize("entry", ["nohost", "h:0", "h:99999", "h:", ":5000"])
def test_join_entries_must_parse(entry):
    invalid("is not HOST:PORT", join=["good:1", entry])


def test_join_entries_accepted():
    assert Settings(join=["a:1", "[::1]:2", "tcp://b:3"]).validate().join == ["a:1", "[::1]:2", "tcp://b:3"]


# ---------------------------------------------------------------------------- parse_host_port


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("node.example.org:1", ("node.example.org", 1)),
        ("  host:65535  ", ("host", 65535)),
        ("[::1]:5000", ("::1", 5000)),
        ("[fe80::1]:7", ("fe80::1", 7)),
        ("tcp://10.0.0.1:5010", ("10.0.0.1", 5010)),
        ("tcp://[::1]:6000", ("::1", 6000)),
        ("::1:5000", ("::1", 5000)),  # unbracketed v6: the last colon splits
    ],
)
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", "host:", ":5000", "[]:5000", "host:0", "host:65536", "host:-1", "host:abc", "host:50 00",
     "host:5000.0", "tcp://", "tcp://:5000", "host:+5", "host:²", "host:٣"],
)
def test_parse_host_port_rejects(text):
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_host_port(text)


# ---------------------------------------------------------------------------- load_file


def test_load_file_valid(tmp_path):
    f = tmp_path / "p2pd.toml"
    f.write_text('port = 6000\nname = "alice"\njoin = ["a:1"]\nheartbeat_timeout_s = 2.5\n')
    assert load_file(f) == {"port": 6000, "name": "alice", "join": ["a:1"], "heartbeat_timeout_s": 2.5}


def test_load_file_empty(tmp_path):
    f = tmp_path / "empty.toml"
    f.write_text("")
    assert load_file(f) == {}


def test_load_file_then_build(tmp_path):
    f = tmp_path / "p2pd.toml"
    f.write_text('port = 6000\njoin = ["a:1"]\n')
    s = build(load_file(f), {"port": 7000, "join": ["b:2"]})
    assert s.port == 7000 and s.join == ["a:1", "b:2"]


def test_load_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path / "nope.toml")


@pytest.mark.parametrize("text", ["port = ", "port = 5000\nport = 5001\n", "[unclosed\n", "name = 'a\n"])
def test_load_file_invalid_toml(tmp_path, text):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_file(f)


def test_load_file_not_utf8(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'name = "\xe9"\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_file(f)


def test_load_file_unknown_keys_listed_sorted(tmp_path):
    f = tmp_path / "p2pd.toml"
    f.write_text("port = 1\nzeta = 2\nalpha = 3\n")
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) alpha, zeta"):
        load_file(f)


def test_load_file_table_is_unknown_key(tmp_path):
    f = tmp_path / "p2pd.toml"
    f.write_text("[node]\nport = 1\n")
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) node"):
        load_file(f)


@pytest.mark.parametrize("name", ["bob\x1b[2J", "csi\x9b", "evil\u202eexe", "\u2066x\u2069", "rlm\u200f", "a\u061cb", "a\u2028b", "z\u200bw"])
def test_names_with_control_or_bidi_characters_are_refused(name):
    invalid("not allowed", name=name)


@pytest.mark.parametrize("addr", ["h\x1b]0;x\x07", "999.1.1.1", "a b", "exa_mple.com", "[10.0.0.1]"])
def test_advertise_must_be_an_address_or_host_name(addr):
    invalid("not an IP address or a host name", advertise=addr)


@pytest.mark.parametrize("addr", ["10.0.0.7", "::1", "node.example.org", "localhost"])
def test_advertise_accepts_addresses_and_host_names(addr):
    assert Settings(advertise=addr).validate().advertise == addr
