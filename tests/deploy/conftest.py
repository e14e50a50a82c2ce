"""The deploy tests (``make test-deploy``): compose.yaml in containers, alone and with the example
NATS cluster (deploy/compose.cluster.yaml), and flowrelay on a local 3-node NATS cluster.

``make test`` leaves this folder out (pyproject's ``--ignore``); naming it runs it. The summary
ends with one line per suite saying whether it ran or why it skipped, so a CI log shows it.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

#: Test modules and what the summary calls them.
SUITES = {
    "test_compose.py": "compose test",
    "test_compose_cluster.py": "compose cluster test",
    "test_cluster.py": "cluster test",
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    outcomes: dict[str, dict[str, str]] = defaultdict(dict)
    reasons: dict[str, str] = {}
    for status in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(status, []):
            nodeid = getattr(report, "nodeid", "")
            module = nodeid.split("::")[0].rsplit("/", 1)[-1]
            if module not in SUITES:
                continue
            if status == "passed" and report.when != "call":
                continue
            outcomes[module].setdefault(nodeid, status)  # the first bad phase wins
            if status == "skipped" and isinstance(report.longrepr, tuple):
                reasons[module] = report.longrepr[2]
    terminalreporter.section("deploy tests")
    for module, label in SUITES.items():
        counts: dict[str, int] = defaultdict(int)
        for status in outcomes.get(module, {}).values():
            counts[status] += 1
        if not counts:
            terminalreporter.write_line(f"DEPLOY {label}: NOT RUN (not collected)")
        elif set(counts) == {"skipped"}:
            terminalreporter.write_line(f"DEPLOY {label}: SKIPPED ({reasons.get(module, 'no reason given')})")
        else:
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            terminalreporter.write_line(f"DEPLOY {label}: RAN ({summary})")
