"""The control API over loopback TCP: the fallback where ZeroMQ has no ``ipc://``
(Windows), forced on Linux with ``P2PD_CONTROL=tcp``.

* unit: the choice of transport, the endpoint and token files (mode 0600 from
  creation, replaced atomically), the token check in `control.handle`, and a
  `Transport` that falls back by itself when ZeroMQ reports no ipc;
* end to end, real daemons with ``P2PD_CONTROL=tcp`` driven by the real p2pctl:
  the commands work, the endpoint is 127.0.0.1, the files are 0600 and go away
  on a clean stop, a raw DEALER without the token (or with a wrong one) is
  refused and counted while the daemon serves on, two nodes link and deliver,
  and another local user gets "permission denied" (exit 5).

Waiting is always "poll until a deadline" (conftest.wait_for).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import zmq

from conftest import P2PD, pid_alive, wait_for
from p2pd import control, exitcodes
from p2pd import protocol as P
from p2pd.actions import ToClient
from p2pd.home import CONTROL_TCP_PREFIX, ENV_CONTROL, ControlChoiceError, Home, control_transport
from p2pd.node import Node as PureNode
from p2pd.settings import Settings
from test_bad_input import dropped, expect_dropped, inbox_texts, log_lines
from test_cli_errors import linked, one_line_error, start_hint
from sechelp import _as_nobody, _cli_result, _client_result, open_base  # noqa: F401 (open_base is a fixture)

REPLY_TIMEOUT_MS = 10_000
TOKEN = "ab" * 32


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def tcp_control(monkeypatch):
    """Daemons and p2pctl started by this test use loopback TCP control (they inherit the environment)."""
    monkeypatch.setenv(ENV_CONTROL, "tcp")


# --------------------------------------------------------------------------- unit: which transport


@pytest.mark.parametrize("env, ipc, endpoint_file, want", [
    (None, True, False, "ipc"),
    (None, False, False, "tcp"),  # Windows: no ipc in ZeroMQ
    (None, True, True, "tcp"),  # a client, and the daemon was started with P2PD_CONTROL=tcp
    ("", True, False, "ipc"),
    ("tcp", True, False, "tcp"),
    (" TCP ", True, False, "tcp"),
    ("tcp", False, False, "tcp"),
    ("ipc", True, False, "ipc"),
    ("ipc", True, True, "ipc"),  # forced: the endpoint file is not looked at
])
def test_control_transport_choice(monkeypatch, tmp_path, env, ipc, endpoint_file, want):
    if env is None:
        monkeypatch.delenv(ENV_CONTROL, raising=False)
    else:
        monkeypatch.setenv(ENV_CONTROL, env)
    home = Home(tmp_path)
    if endpoint_file:
        home.control_endpoint_file.write_text("tcp://127.0.0.1:5000\n")
    assert control_transport(ipc, home.control_endpoint_file) == want


@pytest.mark.parametrize("env, ipc, words", [
    ("udp", True, ["'udp'", "ipc", "tcp"]),
    ("ipc", False, ["ipc", "tcp"]),
])
def test_control_transport_refuses_what_cannot_work(monkeypatch, env, ipc, words):
    monkeypatch.setenv(ENV_CONTROL, env)
    with pytest.raises(ControlChoiceError) as e:
        control_transport(ipc)
    message = str(e.value)
    assert "\n" not in message and ENV_CONTROL in message
    assert all(w in message for w in words), message


def test_a_bad_p2pd_control_is_a_usage_error_in_both_programs(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import p2pctl.cli
    import p2pd.cli

    monkeypatch.setenv(ENV_CONTROL, "bogus")
    home = str(tmp_path / "home")
    for main, args in ((p2pd.cli.main, ["start", "--home", home, "--foreground"]), (p2pctl.cli.main, ["--home", home, "info"])):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == exitcodes.USAGE, res.output
        assert "P2PD_CONTROL='bogus' is not valid: use ipc or tcp" in res.output
        assert "Traceback" not in res.output
    assert not (tmp_path / "home" / "p2pd.pid").exists()  # nothing was started


# --------------------------------------------------------------------------- unit: the endpoint and token files


def test_control_files_are_0600_from_creation_and_replaced_atomically(monkeypatch, tmp_path):
    home = Home(tmp_path)
    home.write_control_files("tcp://127.0.0.1:40000", "00" * 32)
    opened, replaced = [], []
    real_open, real_replace = os.open, os.replace

    def spy_open(path, flags, mode=0o777, *a, **kw):
        opened.append((Path(path).name, flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    def spy_replace(src, dst):
        # at the moment the new file takes the old one's place it is complete and already 0600,
        # and until then the old file is untouched
        new = Path(src).read_text()
        replaced.append((Path(dst).name, mode(src), new, Path(dst).read_text()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "replace", spy_replace)
    old_umask = os.umask(0)  # even with no umask at all, nobody else may ever read them
    try:
        home.write_control_files("tcp://127.0.0.1:40001", TOKEN)
    finally:
        os.umask(old_umask)
    monkeypatch.undo()

    assert [r[0] for r in replaced] == ["control.token", "control.endpoint"]  # the token first
    assert replaced[0][1:] == (0o600, TOKEN + "\n", "00" * 32 + "\n")
    assert replaced[1][1:] == (0o600, "tcp://127.0.0.1:40001\n", "tcp://127.0.0.1:40000\n")
    for name, flags, how in opened:
        assert name.startswith((".control.token.", ".control.endpoint.")) and name.endswith(".tmp"), name  # never the file itself
        assert flags & os.O_CREAT and flags & os.O_WRONLY and flags & os.O_TRUNC and how == 0o600
    assert len(opened) == 2
    assert mode(home.control_token_file) == mode(home.control_endpoint_file) == 0o600
    assert home.read_control_files() == ("tcp://127.0.0.1:40001", TOKEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["control.endpoint", "control.token"]  # no temp file left

    home.remove_control_files()
    home.remove_control_files()  # already gone: fine
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        home.read_control_files()


@pytest.mark.parametrize("endpoint, token", [
    ("tcp://0.0.0.0:40000", TOKEN),  # never anything but loopback
    ("tcp://192.168.1.7:40000", TOKEN),
    ("ipc:///tmp/x.sock", TOKEN),
    ("tcp://127.0.0.1:", TOKEN),
    ("tcp://127.0.0.1:99999", TOKEN),
    ("tcp://127.0.0.1:²", TOKEN),
    ("tcp://127.0.0.1:40000", "ab" * 16),
    ("tcp://127.0.0.1:40000", "zz" * 32),
])
def test_damaged_control_files_are_refused(tmp_path, endpoint, token):
    home = Home(tmp_path)
    home.write_control_files(endpoint, token)
    with pytest.raises(ValueError):
        home.read_control_files()


# --------------------------------------------------------------------------- unit: the token check


def pure_node() -> PureNode:
    return PureNode("alice-id", "alice", P.PeerAddress("127.0.0.1", 5001, 5002), Settings().validate(), 0.0, 1.7e9)


def _reply(node: PureNode, request: dict, token: str | None) -> dict:
    acts = control.handle(node, 1.0, b"cli", json.dumps(request).encode(), {"pid": 1}, token)
    [reply] = [a.payload for a in acts if isinstance(a, ToClient)]
    return reply


@pytest.mark.parametrize("given", [None, "", 5, ["x"], "ab" * 31, TOKEN.upper(), TOKEN + "00", "é" * 64])
def test_a_request_without_the_right_token_is_refused_and_counted(given):
    node = pure_node()
    request = {"req": 7, "cmd": "status"}
    if given is not None:
        request["token"] = given
    reply = _reply(node, request, TOKEN)
    assert reply["ok"] is False and reply["code"] == "bad_token" and reply["req"] == 7, reply
    assert reply["error"].startswith("bad control token") and "\n" not in reply["error"]
    assert node.dropped["bad_control"] == 1


def test_the_right_token_is_accepted_and_ipc_needs_none():
    node = pure_node()
    assert _reply(node, {"req": 1, "cmd": "status", "token": TOKEN}, TOKEN)["ok"] is True
    assert _reply(node, {"req": 2, "cmd": "status"}, None)["ok"] is True  # ipc: the socket's file mode protects it
    assert _reply(node, {"req": 3, "cmd": "status", "token": TOKEN}, None)["ok"] is True
    # checked before the command, so a stranger learns nothing about the commands
    assert _reply(node, {"req": 4, "cmd": "frobnicate"}, TOKEN)["code"] == "bad_token"
    assert node.dropped["bad_control"] == 1


def test_transport_falls_back_to_loopback_tcp_without_ipc(monkeypatch, tmp_path):
    """No P2PD_CONTROL: a ZeroMQ without ipc (as on Windows) gets TCP control, and so does the client."""
    from p2pctl.client import Client
    from p2pd.transport import Transport

    monkeypatch.delenv(ENV_CONTROL, raising=False)
    real_has = zmq.has
    monkeypatch.setattr(zmq, "has", lambda what: False if what == "ipc" else real_has(what))
    home = Home(tmp_path / "home")
    home.ensure()
    home.socket_path.write_text("stale")
    settings = Settings(host="127.0.0.1", port=0, insecure=True).validate()
    transport = Transport(home, settings, "a" * 32, "alice")
    try:
        endpoint = transport.control_endpoint
        assert endpoint.startswith(CONTROL_TCP_PREFIX) and endpoint == transport.control.getsockopt_string(zmq.LAST_ENDPOINT)
        assert home.read_control_files() == (endpoint, transport.control_token)
        assert not home.socket_path.exists()  # the stale socket file is gone
        with Client(home.path) as c:
            assert c._endpoint() == endpoint and c._token == transport.control_token
    finally:
        transport.close()
    assert not home.control_endpoint_file.exists() and not home.control_token_file.exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.timeout(120)
def test_p2pctl_works_over_loopback_tcp(make_node, tcp_control, monkeypatch):
    alice = make_node("alice")
    alice.start()
    home = Home(alice.home)
    endpoint = alice.info["control"]
    assert endpoint.startswith(CONTROL_TCP_PREFIX), endpoint
    assert home.read_control_files()[0] == endpoint
    assert mode(home.control_token_file) == mode(home.control_endpoint_file) == 0o600
    assert not home.socket_path.exists()
    first_token = home.read_control_files()[1]

    info = alice.ctl_json("info")
    assert info["control"] == endpoint and info["id"] == alice.id
    assert f"control     {endpoint}" in alice.ctl("info").stdout
    assert alice.ctl_json("peers") == []
    assert alice.ctl_json("status")["control"] == endpoint
    assert alice.ctl_json("inbox") == []
    running = subprocess.run([*P2PD, "status", "--home", str(alice.home)], capture_output=True, text=True, timeout=30)
    assert running.returncode == 0 and "p2pd is running" in running.stdout, running

    # a client without P2PD_CONTROL finds TCP control through the home's control.endpoint
    monkeypatch.delenv(ENV_CONTROL)
    assert alice.ctl_json("status")["control"] == endpoint
    monkeypatch.setenv(ENV_CONTROL, "tcp")

    # killed: the files stay behind, and p2pctl says "not running" (exit 3), not "timeout"
    alice.kill9()
    one_line_error(alice.ctl("info", check=False), exitcodes.NOT_RUNNING, "not running", "stale control endpoint", endpoint, start_hint(alice.home))

    # started again: both files are written anew, with a new token
    alice.start()
    endpoint, token = home.read_control_files()
    assert token != first_token and alice.info["control"] == endpoint
    assert alice.ctl_json("info")["pid"] == alice.pid

    # a clean stop removes them, and then p2pctl says "not running" (exit 3)
    assert alice.stop().returncode == 0
    assert not home.control_endpoint_file.exists() and not home.control_token_file.exists()
    one_line_error(alice.ctl("info", check=False), exitcodes.NOT_RUNNING, "not running", str(home.control_endpoint_file), start_hint(alice.home))


@pytest.mark.timeout(120)
def test_a_request_without_the_token_is_refused_and_the_daemon_serves_on(make_node, tcp_control, zctx):
    alice = make_node("alice")
    alice.start()
    endpoint, token = Home(alice.home).read_control_files()
    # any local user can connect to a loopback port: the token is what keeps them out
    ctl = zctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 0)
    ctl.setsockopt(zmq.SNDTIMEO, REPLY_TIMEOUT_MS)
    ctl.connect(endpoint)
    before = dropped(alice)

    def ask(request: dict) -> dict:
        ctl.send(json.dumps(request).encode())
        assert ctl.poll(REPLY_TIMEOUT_MS), f"no reply to {request}"
        return json.loads(ctl.recv())

    wrong = "0" * 64 if token != "0" * 64 else "1" * 64
    for n, extra in enumerate([{}, {"token": wrong}, {"token": ""}, {"token": token[:-1]}], start=1):
        reply = ask({"req": n, "cmd": "stop", **extra})  # even `stop`: refused, the node stays up
        assert reply == {"req": n, "ok": False, "code": "bad_token", "error": reply["error"]}, reply
        assert reply["error"].startswith("bad control token") and "\n" not in reply["error"]
        assert pid_alive(alice.pid)
    expect_dropped(alice, before, {"bad_control": 4}, "requests without the right token")
    assert log_lines(alice, "bad_control")

    # the same connection with the token is served
    ok = ask({"req": 9, "cmd": "status", "token": token})
    assert ok["ok"] is True and ok["result"]["pid"] == alice.pid and ok["result"]["control"] == endpoint
    assert alice.ctl_json("info")["dropped"]["bad_control"] == 4
    assert "error while handling input" not in alice.log_text()


@pytest.mark.timeout(120)
def test_two_nodes_link_and_deliver_with_tcp_control(make_node, tcp_control):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    assert alice.info["control"] != bob.info["control"]
    for node in (alice, bob):
        assert node.info["control"].startswith(CONTROL_TCP_PREFIX)
    linked(alice, bob)
    text = f"over tcp control {uuid.uuid4().hex}"
    bob.ctl("send", "alice", text)
    wait_for(lambda: text in inbox_texts(alice), what="bob's message at alice")
    assert {p["name"]: p["state"] for p in alice.ctl_json("peers")} == {"bob": "alive"}
    for node in (alice, bob):
        assert dropped(node)["by_kind"].get("bad_control", 0) == 0


@pytest.mark.slow  # runs p2pd/p2pctl processes
@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to drop to another user")
def test_another_local_user_cannot_read_the_token(open_base, tcp_control):
    from conftest import Daemon

    base, registry = open_base
    alice = Daemon(base, "alice", registry)
    alice.start()
    home = Home(alice.home)
    assert mode(alice.home) == 0o700

    def denied(res: dict, path: Path) -> None:
        assert "crash" not in res, res.get("crash")
        assert res["code"] == exitcodes.PERMISSION, res
        assert "permission denied" in res["err"].lower() and str(path) in res["err"] and "Traceback" not in res["err"], res

    denied(_as_nobody(lambda: _cli_result(["--home", str(alice.home), "info"])), alice.home)
    res = _as_nobody(lambda: _client_result(str(alice.home)))
    assert res["ok"] is False and res["type"] == "PermissionDenied" and res["exit_code"] == exitcodes.PERMISSION, res
    # even with the home opened up, the files themselves (0600) keep the token from them
    os.chmod(alice.home, 0o711)
    try:
        denied(_as_nobody(lambda: _cli_result(["--home", str(alice.home), "info"])), home.control_endpoint_file)
        os.chmod(home.control_endpoint_file, 0o644)  # and the token alone is enough
        denied(_as_nobody(lambda: _cli_result(["--home", str(alice.home), "info"])), home.control_token_file)
    finally:
        os.chmod(alice.home, 0o700)
    assert alice.ctl_json("info")["dropped"].get("bad_control", 0) == 0
