"""`hpkg agent` on real processes: it patches what runs at start-up, each process that starts later (its
executable or a library, also one dlopen()ed late), refuses files it cannot trust and serves the rest,
comes back after SIGKILL without changing anything, lets uninstall revert everywhere, and never leaves a
target stopped or traced, whether the target exits mid-apply or the agent is stopped mid-apply."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from conftest import WAIT, AgentProcess, install
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings
from sample_corpus import Conversation, Sample

from hpkg.loader.agent import Agent, AgentSettings
from hpkg.loader.agent_log import EventLog, parse_line
from hpkg.loader.exec_events import Overrun
from hpkg.loader.store import Store


def _wait_for_package_memory(pid: int) -> None:
    """Until the loader has placed a package in `pid` (an apply is under way, waiting for a safe moment)."""
    deadline = time.monotonic() + WAIT
    while not hpkg_mappings(pid):
        assert time.monotonic() < deadline, f"no package memory ever appeared in process {pid}"
        time.sleep(0.002)


def _start_lingering(baseline: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([str(baseline)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_at_start_up_the_agent_patches_every_running_baseline_process_and_nothing_else(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    unrelated: subprocess.Popen[bytes],
    run_agent: Callable[..., AgentProcess],
) -> None:
    server, library = own_samples["server"], own_samples["library"]
    baselines = [start(server), start(server), start(library)]
    bystanders = [start(server, "fixed"), start(library, "fixed")]
    for talk, sample in zip(baselines, (server, server, library), strict=True):
        assert talk.ask(sample.steps[0].request) == sample.live_answers()[0]
    install(packages["server"][0], "--key", public_key)
    install(packages["library"][0])

    agent = run_agent()
    summary = agent.wait_for("pass-done", reason="start")
    assert summary.fields.get("applied") == "3" and "refused" not in summary.fields, summary.text
    applied = {int(line.fields["pid"]) for line in agent.events("applied")}
    assert applied == {talk.pid for talk in baselines}
    assert all(line.priority == 6 for line in agent.events("applied"))
    for talk, sample in zip(baselines, (server, server, library), strict=True):
        assert talk.ask(sample.steps[1].request) == sample.live_answers()[1]  # fixed, state kept
        assert_running_untraced(talk.pid)
    for process in [*bystanders, unrelated]:
        assert hpkg_mappings(process.pid) == []
    assert agent.stop() == 0
    assert agent.lines[-1].event == "stopped"


def test_a_process_started_after_install_is_patched_by_the_agent_before_its_second_request(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    run_agent: Callable[..., AgentProcess],
) -> None:
    """The agent runs first, with an empty store; the package is installed while it runs (it notices the
    store change), then the processes start. Each answers its first request (the same in both builds),
    the agent reports it patched, and the second request is answered by the fix with the state kept.
    The library host exercises the wait for the dynamic linker: at exec its libpct is not mapped yet."""
    agent = run_agent()
    for name in ("server", "library"):
        path, package_id = packages[name]
        mark = agent.mark()
        install(path, "--key", public_key)
        agent.wait_for("package-served", after=mark, package=package_id)
        sample = own_samples[name]
        talk = start(sample)
        assert talk.ask(sample.steps[0].request) == sample.live_answers()[0]
        line = agent.wait_for("applied", pid=talk.pid, package=package_id)
        assert float(line.fields["exec_to_patched_ms"]) > 0
        assert line.fields["image"].endswith("baseline" if name == "server" else "libpct.so.1")
        assert talk.ask(sample.steps[1].request) == sample.live_answers()[1]
        assert_running_untraced(talk.pid)


def test_a_library_dlopened_late_in_a_process_is_patched(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    dlopen_host: Path,
    run_agent: Callable[..., AgentProcess],
) -> None:
    path, package_id = packages["library"]
    install(path, "--key", public_key)
    agent = run_agent()
    process = subprocess.Popen([str(dlopen_host)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdin is not None and process.stdout is not None

        def ask(request: str) -> str:
            process.stdin.write(request + "\n")
            process.stdin.flush()
            return process.stdout.readline().rstrip("\n")

        assert ask("decode a%20b") == "error: unknown request"  # started, and no library mapped yet
        assert ask(f"load {own_samples['library'].binary('baseline', 'ready')}") == "loaded"
        assert ask("decode a%20b") == "a b (1 decoded)"  # the same answer either way
        agent.wait_for("applied", pid=process.pid, package=package_id)
        assert ask("decode evil.php%00.jpg") == "error: malformed (1 decoded)"  # fixed, counter kept
        assert_running_untraced(process.pid)
    finally:
        process.kill()
        process.wait()


def test_a_corrupt_or_unsigned_file_in_the_store_is_refused_and_logged_and_the_rest_is_served(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    store: Path,
    start: Callable[..., Conversation],
    run_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    server_path, server_id = packages["server"]
    install(server_path, "--key", public_key)
    library_path, library_id = packages["library"]
    corrupt = bytearray(library_path.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0x10
    (store / "packages" / f"{library_id}.hpkg").write_bytes(bytes(corrupt))

    agent = run_agent()
    refused = agent.wait_for("package-refused", file=store / "packages" / f"{library_id}.hpkg")
    assert refused.priority == 3 and refused.fields["reason"]
    agent.wait_for("package-served", package=server_id)

    # Dropped while the agent runs: an unsigned package under its own id. Refused too, logged once.
    sample = own_samples["library"]
    unsigned = tmp_path / "unsigned.hpkg"
    built = hpkg("build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), "-o", unsigned,
                 "--level", "2", "--json")
    assert built.returncode == 0, built.stderr
    dropped = store / "packages" / f"{built.json()['package_id']}.hpkg"
    os.link(unsigned, dropped)
    line = agent.wait_for("package-refused", file=dropped)
    assert "unsigned, and not installed with --allow-unsigned" in line.fields["reason"]

    talk = start(own_samples["server"])
    agent.wait_for("applied", pid=talk.pid, package=server_id)
    host = start(sample)
    for step in sample.steps[:2]:
        assert host.ask(step.request) == step.baseline  # nothing is served for the library
    assert hpkg_mappings(host.pid) == []
    assert agent.events("applied") == agent.events("applied")[:1]
    assert len(agent.events("package-refused")) == 2


def test_after_sigkill_a_restarted_agent_changes_nothing_and_patches_new_processes_again(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    run_agent: Callable[..., AgentProcess],
) -> None:
    path, package_id = packages["server"]
    install(path, "--key", public_key)
    server = own_samples["server"]
    first = start(server)
    agent = run_agent()
    agent.wait_for("applied", pid=first.pid)
    memory = hpkg_mappings(first.pid)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL

    again = run_agent()
    summary = again.wait_for("pass-done", reason="start")
    assert summary.fields.get("already_applied") == "1" and "applied" not in summary.fields, summary.text
    assert again.events("applied") == []
    assert [int(line.fields["pid"]) for line in again.events("already-applied")] == [first.pid]
    assert hpkg_mappings(first.pid) == memory  # the same package memory: nothing written again
    fixed_first_answer = server.steps[1].fixed.replace("#2", "#1")  # the long path as a first request
    assert first.ask(server.steps[1].request) == fixed_first_answer

    later = start(server)
    again.wait_for("applied", pid=later.pid, package=package_id)
    assert later.ask(server.steps[1].request) == fixed_first_answer


def test_uninstall_reverts_the_package_everywhere_and_the_agent_stops_serving_it(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    store: Path,
    start: Callable[..., Conversation],
    run_agent: Callable[..., AgentProcess],
) -> None:
    path, package_id = packages["server"]
    install(path, "--key", public_key)
    server = own_samples["server"]
    talks = [start(server), start(server)]
    agent = run_agent()
    for talk in talks:
        agent.wait_for("applied", pid=talk.pid)
    want = server.live_answers()  # patched after step 1, reverted after step 3
    for step in range(3):
        for talk in talks:
            assert talk.ask(server.steps[step].request) == want[step]

    run = hpkg("uninstall", package_id, "--json")
    assert run.returncode == 0, run.stderr
    document = run.json()
    assert document["changed"] is True and document["removed_from_store"] is True
    outcomes = {p["pid"]: p["outcome"] for p in document["revert"]["processes"]}
    assert outcomes == {talk.pid: "reverted" for talk in talks}
    agent.wait_for("package-removed", package=package_id)
    for step in range(3, len(server.steps)):
        for talk in talks:
            assert talk.ask(server.steps[step].request) == want[step]  # the baseline again, state kept
    for talk in talks:
        assert hpkg_mappings(talk.pid) == []
        assert_running_untraced(talk.pid)
    assert list((store / "packages").iterdir()) == []


def test_a_target_that_exits_mid_apply_is_gone_and_the_agent_carries_on(
    lingering: tuple[Path, Path],
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    run_agent: Callable[..., AgentProcess],
) -> None:
    """lingering keeps a thread inside the replaced linger(), so the agent's apply waits (--timeout 30)
    for a safe moment, its package already placed; the target is SIGKILLed then."""
    baseline, package = lingering
    install(package, "--key", public_key)
    install(packages["server"][0], "--key", public_key)
    agent = run_agent("--timeout", "30")
    victim = _start_lingering(baseline)
    try:
        _wait_for_package_memory(victim.pid)
        victim.send_signal(signal.SIGKILL)
        gone = agent.wait_for("gone", pid=victim.pid)
        assert gone.fields["reason"] == "the process exited"
    finally:
        victim.kill()
        victim.wait()
    talk = start(own_samples["server"])
    agent.wait_for("applied", pid=talk.pid)
    assert agent.process.poll() is None


def test_sigterm_while_an_apply_waits_stops_the_agent_and_leaves_the_target_running_untraced(
    lingering: tuple[Path, Path], public_key: Path, run_agent: Callable[..., AgentProcess]
) -> None:
    baseline, package = lingering
    install(package, "--key", public_key)
    agent = run_agent("--timeout", "3")
    target = _start_lingering(baseline)
    try:
        _wait_for_package_memory(target.pid)
        mark = agent.mark()
        assert agent.stop(signal.SIGTERM) == 0
        events = [line.event for line in agent.lines[mark:]]
        assert events[0] == "stopping" and events[-1] == "stopped", events
        assert agent.wait_for("refused", pid=target.pid).fields["reason"]  # its wait ran out, cleanly
        assert_running_untraced(target.pid)
        assert hpkg_mappings(target.pid) == []  # the package memory placed for the wait was freed
        assert target.stdin is not None and target.stdout is not None
        target.stdin.write("ping\n")
        target.stdin.flush()
        assert target.stdout.readline().startswith("pong ")
    finally:
        target.kill()
        target.wait()


def test_an_overrun_makes_the_agent_look_at_every_process_again(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    store: Path,
    start: Callable[..., Conversation],
) -> None:
    """In process, without the kernel's connector (an overrun cannot be provoked on demand): the agent
    knows the server patched; someone reverts it; only a pass that forgets what it knew (an overrun:
    events were lost) finds it again."""
    path, package_id = packages["server"]
    install(path, "--key", public_key)
    talk = start(own_samples["server"])
    log = io.StringIO()
    agent = Agent(Store.open(), AgentSettings(jobs=1), EventLog(log))
    try:
        agent.reload_store(initial=True)
        agent.full_pass("start")
        _wait_for_jobs(agent)
        assert hpkg("revert", "--pid", talk.pid).returncode == 0
        agent.full_pass(None)  # a periodic pass trusts what the agent knows: nothing to do
        assert not agent.in_flight and hpkg_mappings(talk.pid) == []
        agent.handle_event(Overrun())
        _wait_for_jobs(agent)
    finally:
        agent.shut_down()
    lines = [parse_line(line) for line in log.getvalue().splitlines()]
    assert [(event, fields.get("reason")) for _, event, fields in lines if event == "pass-done"] == [
        ("pass-done", "start"), ("pass-done", "overrun")]
    assert "overrun" in [event for _, event, _ in lines]
    applied = [fields for _, event, fields in lines if event == "applied"]
    assert [(int(f["pid"]), f["package"]) for f in applied] == [(talk.pid, package_id)] * 2
    assert talk.ask(own_samples["server"].steps[1].request) == own_samples["server"].steps[1].fixed.replace(
        "#2", "#1")


def _wait_for_jobs(agent: Agent) -> None:
    deadline = time.monotonic() + WAIT
    while agent.in_flight:
        assert time.monotonic() < deadline, "the agent's jobs never finished"
        time.sleep(0.01)
        agent.collect_finished()


def _with_huge_note_segment(source: Path, out: Path) -> Path:
    """A copy of `source` whose PT_NOTE claims 2^62 bytes: the kernel runs it (it does not read notes),
    and every scan of the machine meets it."""
    blob = bytearray(source.read_bytes())
    phoff, = struct.unpack_from("<Q", blob, 0x20)
    phnum, = struct.unpack_from("<H", blob, 0x38)
    for index in range(phnum):
        entry = phoff + index * 56
        if struct.unpack_from("<I", blob, entry)[0] == 4:  # PT_NOTE: p_filesz is at +32
            struct.pack_into("<Q", blob, entry + 32, 1 << 62)
            break
    else:
        raise AssertionError(f"{source} has no PT_NOTE")
    out.write_bytes(bytes(blob))
    out.chmod(0o755)
    return out


def test_a_process_running_a_file_with_a_huge_note_segment_stops_neither_the_agent_nor_apply_all(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    run_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    """Any user can run such a file, and every machine-wide scan reads its build-id note: read whole, it
    raised MemoryError (`apply --all`, `status --store` and the agent all stopped there)."""
    hostile = subprocess.Popen([str(_with_huge_note_segment(Path("/bin/sleep"), tmp_path / "sleep")), "600"])
    try:
        path, package_id = packages["server"]
        install(path, "--key", public_key)
        agent = run_agent()
        talk = start(own_samples["server"])
        agent.wait_for("applied", pid=talk.pid, package=package_id)
        assert agent.events("internal-error") == []
        everywhere = hpkg("apply", path, "--all", "--key", public_key, "--json")
        assert everywhere.returncode == 0, everywhere.stderr
        assert [p["outcome"] for p in everywhere.json()["processes"]] == ["already applied"]
        assert hpkg("status", "--pid", hostile.pid, "--store").returncode == 0
    finally:
        hostile.kill()
        hostile.wait()
