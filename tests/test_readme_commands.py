"""The README's commands on the main job's output: ``bash integration/runcpu.sh --mc`` (the README's first
command; its machine lost mid-way through base_train by a SIGKILL, then the same command again, which
must continue the run rather than restart it), then every command of its *Chat* and *Evaluate your run*
sections, as written, from a directory laid out as the repository root after that run (``.mc/nanochat``,
``.mc/runcpu``). Only the README's placeholders are filled in (``d20``: the run's depth, ``notes/*.txt``
and ``long_report.txt``: files of ours, ``chat_cli``'s stdin, ``chat_web``'s port); a command that needs
what no offline CPU machine has says why it is left out (``NETWORK``). ``test_readme.py`` checks the
other sections' commands statically (scripts, subcommands, flags, knobs)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_nanochat_hooks import patched  # noqa: F401 (fixture)
from test_readme import command_lines

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NETWORK = {"megacontext nanochat run chat_eval": "upstream's chat tasks download their data (ARC, MMLU, GSM8K, ...)"}
"""Commands this offline test cannot run, by prefix, and why (the offline recipes validate the SFT
checkpoint with ``megacontext eval validate``, which is run)."""

LONG_REPORT = ("The quarterly report is long. " * 60 + "The pass key is 48213. Remember it. "
               + "The weather was mild and the meetings ran late. " * 60)


def section_commands(title: str) -> list[str]:
    """The commands of the README section ``## TITLE``'s bash blocks (``test_readme.command_lines``)."""
    body = README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return command_lines(re.findall(r"^```bash\n(.*?)^```", body, flags=re.S | re.M))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(command: str, cwd: Path, env: dict[str, str], question: str) -> str:
    """``chat_web``: start it on a free port, ask it ``question``, stop it; its answer's first bytes."""
    port = _free_port()
    proc = subprocess.Popen(["bash", "-c", f"exec {command} --port {port}"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"{command}: not serving on port {port} after 300 s")
        body = json.dumps({"messages": [{"role": "user", "content": question}], "max_tokens": 8}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200
            return r.read(200).decode("utf-8", "replace")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.integration
@pytest.mark.slow(minutes=16)
@pytest.mark.upstream("pin")  # runcpu.sh runs the pin's scripts (mid_train); master has none
def test_every_readme_command_works_on_the_main_jobs_output(patched: Path, tmp_path: Path) -> None:  # noqa: F811
    for module in ("rustbpe", "tokenizers", "psutil", "pyarrow", "filelock", "fastapi", "uvicorn"):
        pytest.importorskip(module, reason=f"upstream's scripts need {module}")
    root = tmp_path / "root"  # the repository root as the README's commands see it
    (root / ".mc").mkdir(parents=True)
    (root / ".mc" / "nanochat").symlink_to(patched)
    run = root / ".mc" / "runcpu"
    env = {k: v for k, v in os.environ.items() if k not in ("NANOCHAT_BASE_DIR", "NANOCHAT_PLUGINS", "MC_NANOCHAT")}
    env |= {"PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    first = re.findall(r"^```bash\n(.*?)^```", README, flags=re.S | re.M)[0].splitlines()[0]  # the main job
    assert first == "bash integration/runcpu.sh --mc"
    job_env = env | {"MC_NANOCHAT": str(patched), "MC_RUNCPU_DIR": str(run), "MC_SAVE_EVERY": "4"}
    lost = subprocess.Popen(["bash", "-c", first], cwd=ROOT, env=job_env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert lost.stdout is not None
    seen = []
    for line in lost.stdout:  # base_train's step 6: its checkpoint of step 4 is on disk
        seen.append(line)
        if line.startswith("step 00006/"):
            os.killpg(lost.pid, signal.SIGKILL)  # the machine is lost mid-stage
            break
    lost.wait(timeout=60)
    assert lost.returncode != 0 and any(line.startswith("step 00006/") for line in seen), "".join(seen[-40:])
    proc = subprocess.run(["bash", "-c", first], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                          env=job_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"runcpu: continuing the unfinished run in {run}" in proc.stdout
    assert all(f"runcpu: skip {stage}: done by an earlier run" in proc.stdout
               for stage in ("data", "tasks", "report reset", "tokenizer"))
    assert "runcpu: base: resuming from step 4, the latest checkpoint in" in proc.stdout
    base_out = proc.stdout.split("runcpu: == base\n")[1].split("runcpu: == mid\n")[0]
    steps = [line.split("/")[0] for line in base_out.splitlines() if line.startswith("step ")]
    assert steps[0] == "step 00004" and steps == sorted(steps)  # continued, not restarted
    assert (run / "report" / "log.txt").read_text().count("Reset report and wrote header") == 1
    assert "== sft eval" in proc.stdout and "megacontext: band " in proc.stdout.split("== sft eval")[1]

    (root / "notes").mkdir()
    (root / "notes" / "meeting.txt").write_text(LONG_REPORT * 3)
    (root / "long_report.txt").write_text(LONG_REPORT)
    depth = next((run / "base_checkpoints").iterdir()).name
    env |= {"NANOCHAT_BASE_DIR": str(run)}
    ran = []
    for command in section_commands("Chat") + section_commands("Evaluate your run"):
        if any(command.startswith(prefix) for prefix in NETWORK):
            continue
        command = command.replace("/d20", f"/{depth}")
        command = command.replace("--checkpoint DIR", f"--checkpoint {run}/base_checkpoints/{depth}")
        if " chat_web " in command:
            # a report longer than the model's window: the answer comes from a MegaContext session
            answer = _serve(command, root, env, LONG_REPORT + " What was the pass key?")
            assert answer.startswith('data: {"token": '), answer
            assert not re.search(r"<\|(user_start|user_end|assistant_start)\|>", answer), answer  # D49
            ran.append(command)
            continue
        stdin = "My dog is called kel.\nWhat is my dog called?\n" if "--mc_session" in command else ""
        proc = subprocess.run(["bash", "-c", command], cwd=root, input=stdin, capture_output=True, text=True,
                              timeout=900, env=env)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{command}\n{proc.stderr[-3000:]}"
        ran.append(command)
    expected = [c for c in section_commands("Chat") + section_commands("Evaluate your run")
                if not any(c.startswith(prefix) for prefix in NETWORK)]
    assert len(ran) == len(expected) >= 8, ran
    assert (root / "chat.json").is_file()  # the chat arm's --json
