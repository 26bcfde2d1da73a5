"""The ``vqp`` command itself: version, Ctrl-C at any moment, missing extras."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import as_from_a_shell

VQP = [sys.executable, "-m", "vqp"]


def test_version():
    r = subprocess.run(VQP + ["--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"vqp {version('vqp')}"


def test_import_is_light():
    """``import vqp`` leaves torch unloaded until a stage is used."""
    code = "import sys, vqp; print('torch' in sys.modules); vqp.RoiConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def _loaded(pid: int, lib: str) -> bool:
    try:
        return lib in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the import under way")
def test_ctrl_c_while_importing(bus_path, tmp_path):
    """Ctrl-C while torch is still loading ends in one line and status 130, not a traceback.

    The first SIGINT goes once the process has mapped libtorch (an event, not a timer), i.e. while
    the subcommands are being imported; it is repeated, as a user would press it again, until the
    process ends: a native library's start-up can swallow one (seen under load), and a repeated
    Ctrl-C must not turn the exit into a traceback either.
    """
    p = subprocess.Popen(VQP + ["image", str(bus_path), str(tmp_path / "out.jpg")], stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "YOLO_OFFLINE": "true"}, preexec_fn=as_from_a_shell)
    while p.poll() is None and not _loaded(p.pid, "libtorch"):
        time.sleep(0.002)  # a poll interval, not a deadline
    assert p.poll() is None, "the command ended before torch was loaded"
    while p.poll() is None:
        p.send_signal(signal.SIGINT)
        time.sleep(0.02)  # a poll interval, not a deadline
    err = p.stderr.read()
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "vqp: interrupted" and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_missing_extra_names_it(monkeypatch, capsys):
    """A command whose optional dependency is not installed says which extra brings it."""
    from vqp.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ModuleNotFoundError
    assert main(["serve", "--model", "opencv"]) == 2
    assert capsys.readouterr().err.strip() == "vqp: error: this command needs uvicorn: pip install 'vqp[serve]'"
