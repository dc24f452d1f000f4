"""README.md's commands give exactly the output it shows: the tour runs against a real demo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from procutil import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as a list of (command, expected output lines)."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


def shell_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="the tour uses curl (apt-get install curl)"
)
def test_tour_output_is_exactly_what_readme_shows() -> None:
    tour = README.split("<!-- tour", 1)[1].split("## Checking a config", 1)[0]
    steps = [step for block in console_blocks(tour) for step in block]
    assert len(steps) >= 8
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "corsproxy", "demo", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, 15, proc=demo)
        for command, expected in steps:
            command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=20, env=shell_env()
            )
            got = [line.rstrip("\r") for line in done.stdout.splitlines()]
            assert got == expected, command
    finally:
        demo.terminate()
        demo.wait(timeout=10)


def test_check_example_prints_what_readme_shows(tmp_path: Path) -> None:
    section = README.split("## Checking a config", 1)[1]
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert yaml_text is not None
    (tmp_path / "broken.yaml").write_text(yaml_text.group(1))
    [[(command, expected)]] = console_blocks(section.split("## Documentation")[0])
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=shell_env(),
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == expected


def test_two_commands_use_a_venv_so_a_distributions_python_can_run_them() -> None:
    """Debian 12's and Ubuntu 24.04's python3 refuse `pip install` outside a virtual
    environment (externally-managed-environment): both commands make and use one, and the
    README names the package that provides venv there."""
    two = README.split("## Two commands", 1)[1].split("## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", two, re.S)[:2]
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install "), command
        assert "python3 -m pip" not in command
    assert commands[0].endswith(".venv/bin/corsproxy demo")
    assert commands[1].endswith(".venv/bin/python -m pytest --all")
    assert "python3-venv" in two
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), ".ci/run must run the README's test command exactly"


def test_readme_says_which_run_is_fast_and_how_to_run_the_rest() -> None:
    """Plain `python3 -m pytest` leaves out the slow, browser and fuzz tests; the README and
    docs/testing.md say so, and how to run them (`--all`, `-m browser`)."""
    for text in (README, (ROOT / "docs" / "testing.md").read_text()):
        assert "python3 -m pytest --all" in text
        assert "-m browser" in text
        assert re.search(r"`python3 -m pytest`.{0,200}(slow|browser)", text, re.S)
