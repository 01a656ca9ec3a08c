"""`hpkg agent --json`: each event is one JSON document on its own line (JSON Lines), every one passing
schemas/agent.json, from the first (`started`) to the last after SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from json_contract import check_document  # noqa: E402

WAIT = 60  # a safety net against a hang, not a timing assertion


def test_agent_json_lines_are_documents_of_its_schema(store: Path) -> None:
    argv = [sys.executable, "-m", "hpkg", "agent", "--json", "--rescan", "1"]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        first = json.loads(agent.stdout.readline())
        check_document(first, "agent")
        assert first["event"] == "started" and first["priority"] == 5
    finally:
        agent.send_signal(signal.SIGTERM)
        rest, _ = agent.communicate(timeout=WAIT)
    assert agent.returncode == 0
    events = [json.loads(line) for line in rest.splitlines()]
    for event in events:
        check_document(event, "agent")
    assert events[-1]["event"] == "stopped"
