"""`make demo` as a user meets it: `tierserve demo` reaches its summary, the `curl` line it
prints answers, and Ctrl-C (SIGTERM here) stops everything it started.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import threading

import pytest

from tests.waiting import eventually
from tierserve.dev.proc import free_port, port_in_use, spawn

pytestmark = pytest.mark.integration

READY_LINE = "Ctrl-C to stop."


def test_demo_reaches_its_summary_and_the_printed_curl_answers() -> None:
    port = free_port()
    proc = spawn(  # bound to this test: a killed pytest takes the demo and its stack with it
        [sys.executable, "-m", "tierserve.cli", "demo", "--port", str(port), "--seconds", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        try:
            eventually(
                lambda: READY_LINE in lines or proc.poll() is not None,
                "`tierserve demo` to print its summary (or exit)",
                timeout=1200,
                interval=1,
            )
        finally:
            output = "\n".join(lines)
            print("\n" + output)  # pytest shows it when the test fails
        assert READY_LINE in lines, f"demo did not reach its summary:\n{output[-3000:]}"

        summary = output[output.index("==> summary") :]
        assert "0 errors" in summary.splitlines()[0], summary
        assert "served by tier: {" in summary and "'small'" in summary
        assert "live threshold:" in summary and "modelled cost" in summary
        # The ledger's per-request costs, summed, against 'large' alone: cheaper, as modelled.
        measured = re.search(r"measured cost .*: ([\d.]+)x cheaper", summary)
        modelled = re.search(r"modelled cost .*: ([\d.]+)x cheaper", summary)
        assert measured and modelled, summary
        assert float(measured.group(1)) > 1.0 and float(modelled.group(1)) > 1.0, summary
        assert "MetricsAvailable=True" in summary, summary
        # Traffic runs until the autoscaler has acted (~50% escalated vs a 30% budget at 0.5),
        # so the summary reports at least one move, made while the traffic ran.
        moves = next(line for line in summary.splitlines() if "threshold moves" in line)
        assert not moves.rstrip().endswith(": 0"), summary

        # Shadow evaluation: the kept answers' win+tie rate in status agrees with their
        # correctness measured directly ('large' is right on ~99% of sums).
        quality = next(line for line in summary.splitlines() if "quality (shadow" in line)
        found = re.search(
            r"win or tie (\d+)% \((\d+)%-(\d+)%, (\d+) judged\).*directly: (\d+)%", quality
        )
        assert found, quality
        rate, low, high, judged, direct = (int(g) for g in found.groups())
        assert judged >= 20 and low <= rate <= high, quality
        assert low - 5 <= direct <= high + 5, quality  # within its interval, rounding aside

        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        answer = json.loads(
            subprocess.run(
                shlex.split(curl), capture_output=True, timeout=60, check=True, text=True
            ).stdout
        )
        assert answer["choices"][0]["text"].strip().isdigit(), answer
        assert answer["tierserve"]["tier"] in ("small", "large"), answer

        kubectl = next(line.strip() for line in lines if " get mt -n demo" in line)
        env_part, command = kubectl.split(" ", 1)
        got = subprocess.run(
            shlex.split(command),
            env={env_part.split("=", 1)[0]: env_part.split("=", 1)[1], "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert "tiny-sums" in got and "cascade" in got, got
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(timeout=10)
    assert code == 0, "\n".join(lines[-30:])
    assert lines[-1] == "==> stopped", lines[-10:]
    assert not port_in_use(port), "the OpenAI endpoint is still up after the demo stopped"
