"""``candle prefetch`` as an operator runs it: a real process joining the test session's Ray cluster."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from rich.console import Console

from candle.cli import status_view
from candle.demo.hub import LocalHub, write_repo
from candle.download.records import FileProgressRecord, RepoProgressRecord
from tests.conftest import RepoFactory

MB = 1024 * 1024


def run_cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "candle.cli", *args],
        env={**os.environ, **env},
        capture_output="stderr" not in kwargs,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_prefetch_prints_the_snapshot_folder(ray_cluster, hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 2 * MB}, {"config.json": b"{}", "README.md": b"# card"})
    done = run_cli(["prefetch", repo_name, "--cache-dir", str(tmp_path), "--exclude", "*.md"], ray_cluster)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.parent == tmp_path / f"models--{repo_name.replace('/', '--')}" / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == source["model.safetensors"].read_bytes()
    assert hub.stats.bodies_for(repo_name) == {"config.json": 1, "model.safetensors": 1}


def test_prefetch_of_unknown_repo_fails_with_one_line(ray_cluster, hub: LocalHub, tmp_path):
    done = run_cli(["prefetch", "nobody/no-such-model", "--cache-dir", str(tmp_path)], ray_cluster)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("candle prefetch: error: nobody/no-such-model: repository not found")


def test_prefetch_uses_the_callers_hub_and_token(ray_cluster, hub: LocalHub, tmp_path):
    """A mirror and token set where the CLI runs win over the hub the cluster's nodes were started with."""
    repo, token = "mirror-only/gated", "hf_caller_secret_token_5678"
    write_repo(tmp_path / "mirror", repo, {"config.json": b'{"from": "mirror"}'})
    with LocalHub(tmp_path / "mirror", gated={repo}, tokens={token}) as mirror:
        caller = {**ray_cluster, "HF_ENDPOINT": mirror.endpoint}
        done = run_cli(["prefetch", repo, "--cache-dir", str(tmp_path / "cache")], {**caller, "HF_TOKEN": token})
        assert done.returncode == 0, done.stderr
        assert (Path(done.stdout.strip().splitlines()[-1]) / "config.json").read_bytes() == b'{"from": "mirror"}'
        assert mirror.stats.bodies_for(repo) == {"config.json": 1}
        assert hub.stats.api_calls[repo] == 0  # the nodes' own hub was never asked
        assert token not in done.stdout + done.stderr

        refused = run_cli(
            ["prefetch", repo, "--cache-dir", str(tmp_path / "other")], {**caller, "HF_TOKEN": "hf_wrong"}
        )
        assert refused.returncode == 1
        assert "access denied" in refused.stderr and "hf_wrong" not in refused.stderr


def test_prefetch_shows_a_progress_bar_on_a_terminal(ray_cluster, hub: LocalHub, make_repo, repo_name, tmp_path):
    make_repo({"model.safetensors": 8 * MB})
    hub.state.bandwidth = 8 * MB
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a width
    try:
        done = run_cli(
            ["prefetch", repo_name, "--cache-dir", str(tmp_path)], ray_cluster, stderr=terminal, stdout=subprocess.PIPE
        )
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert repo_name.encode() in drawn and b"100%" in drawn and b"8.00M/8.00M" in drawn


def test_status_lists_downloads_per_node(ray_cluster, hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    make_repo({"model.safetensors": 3 * MB})
    assert run_cli(["prefetch", repo_name, "--cache-dir", str(tmp_path)], ray_cluster).returncode == 0
    done = run_cli(["status", repo_name], ray_cluster)
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.strip().splitlines()
    assert header.split()[:3] == ["node", "model", "state"]
    assert repo_name[:46] in row and " done " in row and "3.15MB" in row
    assert (
        run_cli(["status", "nobody/never-fetched"], ray_cluster).stdout.strip()
        == "no downloads yet of nobody/never-fetched"
    )


def test_status_says_where_each_file_in_flight_comes_from(
    ray_cluster, hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    make_repo({"model.safetensors": 4 * MB})
    hub.state.throttles[repo_name] = MB  # 4 s: long enough to ask while it runs
    command = [sys.executable, "-m", "candle.cli", "prefetch", repo_name, "--cache-dir", str(tmp_path), "--quiet"]
    prefetch = subprocess.Popen(command, env={**os.environ, **ray_cluster}, stdout=subprocess.DEVNULL)
    try:
        file_rows: list[str] = []
        while not file_rows and prefetch.poll() is None:
            rows = run_cli(["status", repo_name], ray_cluster).stdout.splitlines()
            file_rows = [row for row in rows if "model.safetensors" in row]
        assert len(file_rows) == 1, f"no line for the file in flight: {rows}"
        assert "from hub" in file_rows[0] and file_rows[0].rstrip().endswith("B/s")
    finally:
        assert prefetch.wait(timeout=120) == 0


def test_the_status_view_draws_a_bar_per_model_and_node_with_its_source():
    def record(repo: str, state, done: int, source=None, upstream=None, rate=0.0) -> RepoProgressRecord:
        weights = FileProgressRecord("model.safetensors", state, done, 4 * MB, rate, source, upstream)
        return RepoProgressRecord(repo, "main", "c" * 40, state, None, (weights,))

    head, worker = "a1b2c3d4e5f6a1b2", "99887766aabbccdd"
    view = status_view(
        {
            head: [record("org/big", "downloading", 3 * MB, "hub", rate=MB), record("org/small", "done", 4 * MB)],
            worker: [record("org/big", "downloading", MB, "relay", head, 2 * MB)],
        }
    )
    console = Console(width=160, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(view)
    lines = [line for line in console.export_text().splitlines() if "org/" in line]
    rows = [line.split("│")[1:4] for line in lines]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["org/big", "99887766", "downloading"],  # by model, then node
        ["org/big", "a1b2c3d4", "downloading"],
        ["org/small", "a1b2c3d4", "done"],
    ]
    assert " 25% " in lines[0] and lines[0].rstrip(" │").endswith("relay a1b2c3d4")  # the head's copy, as it arrives
    assert " 75% " in lines[1] and lines[1].rstrip(" │").endswith("hub")
    assert " 100% " in lines[2] and "4.19MB/4.19MB" in lines[2]


def read_until(fd: int, needles: list[bytes], timeout_s: float) -> bytes:
    """What a terminal showed until every needle appeared (or the time ran out)."""
    drawn, deadline = b"", time.monotonic() + timeout_s
    while not all(n in drawn for n in needles) and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                drawn += os.read(fd, 65536)
            except OSError:
                break
    return drawn


def test_status_watch_redraws_the_download_live_until_ctrl_c(
    ray_cluster, hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    make_repo({"model.safetensors": 6 * MB})
    hub.state.throttles[repo_name] = MB  # 6 s: several redraws while it runs
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
    watch = subprocess.Popen(
        [sys.executable, "-m", "candle.cli", "status", repo_name, "--watch", "--interval", "0.2"],
        env={**os.environ, **ray_cluster},
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        assert b"candle downloads" in read_until(controller, [b"candle downloads"], 60)  # watching: now fetch
        command = [sys.executable, "-m", "candle.cli", "prefetch", repo_name, "--cache-dir", str(tmp_path), "--quiet"]
        prefetch = subprocess.Popen(command, env={**os.environ, **ray_cluster}, stdout=subprocess.DEVNULL)
        during = read_until(controller, [b"downloading", b"hub"], 60)
        assert prefetch.poll() is None  # drawn while the download still ran
        assert prefetch.wait(timeout=120) == 0
        after = read_until(controller, [b"done", b"100%"], 30)
        os.killpg(watch.pid, signal.SIGINT)  # Ctrl-C ends a watch: not an error
        assert watch.wait(timeout=30) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
        os.close(controller)
    assert repo_name.encode() in during and b"downloading" in during and b"hub" in during, during[-2000:]
    assert b"done" in after and b"100%" in after, after[-2000:]


def test_prefetch_job_sends_the_callers_hub_with_every_request(monkeypatch):
    from candle.catalog import load_catalog
    from candle.download.config import caller_hub_access
    from candle.jobs.prefetch import plan

    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.internal:8080")
    monkeypatch.setenv("HF_TOKEN", "hf_job_secret_token")
    node = {"NodeID": "n1", "Alive": True, "Labels": {}, "Resources": {"CPU": 8.0}}
    targets = plan(["all-minilm-l6-v2", "someone/model"], load_catalog("production"), [node], hub=caller_hub_access())
    assert [(t.request.endpoint, t.request.token) for t in targets] == [
        ("http://mirror.internal:8080", "hf_job_secret_token")
    ] * 2
    assert "hf_job_secret_token" not in repr(targets)
