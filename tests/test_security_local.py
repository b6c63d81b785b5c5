"""Security on the machine itself: another local user cannot use a node's control socket (exit 5,
no traceback), and `p2pd keygen` makes a private key and will not overwrite one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import P2PD, Daemon, pid_alive
from p2pd import exitcodes
from p2pd.keys import node_id_for
from sechelp import _as_nobody, _cli_result, _client_result, _unix_connect
from sechelp import open_base  # noqa: F401 (a fixture)


# --------------------------------------------------------------------------- 5. the control socket is the owner's


@pytest.mark.slow  # runs p2pd/p2pctl processes
@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to drop to another user")
def test_another_local_user_cannot_use_the_control_socket(open_base):
    base, registry = open_base
    alice = Daemon(base, "alice", registry)
    alice.start()
    home = alice.home
    sock_path = Path(alice.info["control"].removeprefix("ipc://"))

    # the files that matter are the owner's only
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "node.key").st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)

    # another user: a clean "permission denied" naming the path, exit 5, no traceback
    res = _as_nobody(lambda: _cli_result(["--home", str(home), "info"]))
    assert "crash" not in res, res.get("crash")
    assert res["code"] == exitcodes.PERMISSION, res
    assert "permission denied" in res["err"].lower() and str(home) in res["err"], res
    assert "Traceback" not in res["err"] and res["out"] == ""
    res = _as_nobody(lambda: _client_result(str(home)))
    assert "crash" not in res, res.get("crash")
    assert res["ok"] is False and res["type"] == "PermissionDenied" and res["exit_code"] == exitcodes.PERMISSION, res

    # even with the home opened up, the socket itself (0600) keeps them out
    os.chmod(home, 0o711)
    try:
        res = _as_nobody(lambda: _unix_connect(str(sock_path)))
        assert res == {"connected": False, "errno": 13}, res  # EACCES from the kernel
        res = _as_nobody(lambda: _cli_result(["--home", str(home), "--json", "info"]))
        assert "crash" not in res, res.get("crash")
        assert res["code"] == exitcodes.PERMISSION, res
        assert json.loads(res["out"])["code"] == "permission_denied"
        assert "permission denied" in res["err"].lower() and str(sock_path) in res["err"], res
    finally:
        os.chmod(home, 0o700)

    # the owner still can, and the daemon did not notice anything
    assert alice.ctl_json("info")["id"] == alice.id
    assert pid_alive(alice.pid)


# --------------------------------------------------------------------------- 9. p2pd keygen


def test_keygen_creates_a_private_key_and_refuses_to_overwrite_it(make_node, tmp_path):
    home = tmp_path / "fresh"

    def keygen(*args):
        return subprocess.run([*P2PD, "keygen", "--home", str(home), *args], capture_output=True, text=True, timeout=60)

    res = keygen()
    assert res.returncode == 0, res.stderr
    key_file = home / "node.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    data = json.loads(key_file.read_text())
    first_id = node_id_for(data["public"])
    assert first_id in res.stdout and data["public"] in res.stdout

    res = keygen()
    assert res.returncode == exitcodes.FAILED, (res.returncode, res.stderr)
    assert "--force" in res.stderr and str(key_file) in res.stderr
    assert json.loads(key_file.read_text()) == data  # untouched

    res = keygen("--force", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["id"] != first_id and out["id"] == node_id_for(out["public_key"])
    assert json.loads(key_file.read_text())["public"] == out["public_key"]
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    # the daemon uses that key, and keygen refuses to change it under a running daemon
    node = make_node("keyed")
    node.home = home
    (home / "p2pd.toml").write_text((tmp_path / "keyed" / "p2pd.toml").read_text())
    node.start()
    assert node.id == out["id"]
    assert node.call("info")["public_key"] == out["public_key"]
    res = keygen("--force")
    assert res.returncode == exitcodes.CONFLICT, (res.returncode, res.stderr)
    assert "running" in res.stderr
    assert json.loads(key_file.read_text())["public"] == out["public_key"]
    assert pid_alive(node.pid)
