"""contrib/ansible/hpkg-rollout.yml with ansible-core against localhost (`-c local`): the first run installs
the package and patches the running baseline processes, reporting changed; the second reports nothing
changed; a process that refuses the package fails the play."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from live_helpers import hpkg_mappings
from sample_corpus import Conversation, Sample

PLAYBOOK = Path(__file__).resolve().parents[2] / "contrib" / "ansible" / "hpkg-rollout.yml"
PLAY_DEADLINE = 300.0  # a safety net against a hang, not a timing assertion


@dataclass(frozen=True)
class Play:
    """One ansible-playbook run, read from its default screen output (ansible-core has no JSON callback)."""

    status: int
    output: str

    def tasks(self) -> dict[str, str]:
        """Each task by name: "changed", "ok", "skipping" or "fatal" on localhost (the first such line
        after the task's header; ansible-core 2.19 prints an error block before "fatal")."""
        found: dict[str, str] = {}
        for section in re.split(r"^TASK ", self.output, flags=re.MULTILINE)[1:]:
            name = re.match(r"\[(.+?)\] \*", section)
            status = re.search(r"^(changed|ok|skipping|fatal): \[localhost\]", section, re.MULTILINE)
            if name and status:
                found[name.group(1)] = status.group(1)
        return found

    def recap(self) -> dict[str, int]:
        """The PLAY RECAP counts of localhost (ok, changed, unreachable, failed, skipped, …)."""
        match = re.search(r"^localhost\s+:(.*)$", self.output, re.MULTILINE)
        assert match is not None, self.output
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _play(tmp_path: Path, store: Path, **variables: object) -> Play:
    """One ansible-playbook run over localhost."""
    ansible = Path(sys.executable).with_name("ansible-playbook")
    extra = {
        "hpkg_command": [sys.executable, "-m", "hpkg"],
        "hpkg_stage_dir": str(tmp_path / "stage"),
        "hpkg_store": str(store),
        "hpkg_become": False,  # the test already runs as root
        "hpkg_environment": {k: os.environ[k] for k in ("HPKG_STATE_DIR", "HPKG_RUN_DIR")},
        "ansible_python_interpreter": sys.executable,
        **variables,
    }
    env = {
        **os.environ,
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }
    argv = [str(ansible), "-i", "localhost,", "-c", "local", str(PLAYBOOK), "-e", json.dumps(extra)]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=PLAY_DEADLINE)
    return Play(run.returncode, run.stdout + run.stderr)


INSTALL = "hpkg install (verify the signature, keep the package in the store)"
APPLY = "hpkg apply --all (every process running the baseline)"


def test_the_first_run_patches_the_running_baselines_and_reports_changed_the_second_changes_nothing(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    store: Path,
    tmp_path: Path,
) -> None:
    server = own_samples["server"]
    talks = [start(server), start(server)]
    for talk in talks:
        assert talk.ask(server.steps[0].request) == server.live_answers()[0]
    path, package_id = packages["server"]

    first = _play(tmp_path, store, hpkg_package=str(path), hpkg_key=str(public_key))
    assert first.status == 0, first.output[-3000:]
    assert first.tasks()[INSTALL] == "changed" and first.tasks()[APPLY] == "changed", first.output
    assert first.recap()["changed"] > 0 and first.recap()["failed"] == 0
    for talk in talks:
        assert talk.ask(server.steps[1].request) == server.live_answers()[1]  # fixed, state kept
        assert hpkg_mappings(talk.pid)
    assert (store / "packages" / f"{package_id}.hpkg").read_bytes() == path.read_bytes()

    second = _play(tmp_path, store, hpkg_package=str(path), hpkg_key=str(public_key))
    assert second.status == 0, second.output[-3000:]
    assert second.tasks()[INSTALL] == "ok" and second.tasks()[APPLY] == "ok", second.output
    assert second.recap()["changed"] == 0, second.output


def test_a_process_that_refuses_the_package_fails_the_host(
    lingering: tuple[Path, Path], public_key: Path, store: Path, tmp_path: Path
) -> None:
    baseline, package = lingering
    process = subprocess.Popen([str(baseline)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        play = _play(tmp_path, store, hpkg_package=str(package), hpkg_key=str(public_key), hpkg_timeout=0.5)
        assert play.status != 0
        assert play.recap()["failed"] == 1
        tasks = play.tasks()
        assert tasks.get(INSTALL) == "changed" and tasks.get(APPLY) == "fatal", play.output
        assert "linger" in play.output[play.output.index("fatal: [localhost]"):]
        assert hpkg_mappings(process.pid) == []
    finally:
        process.kill()
        process.wait()
