"""The CLI root: version, help and the one-line error contract."""

import subprocess
import sys


def test_python_m_hpkg_prints_version():
    out = subprocess.run([sys.executable, "-m", "hpkg", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "hpkg" in out.stdout


def test_unknown_command_is_a_usage_error_with_exit_2():
    out = subprocess.run([sys.executable, "-m", "hpkg", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
