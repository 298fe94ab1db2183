"""The one `dkit serve` harness (dkit.devtools.serve_process), used by the benches and the kiosk tests."""

from __future__ import annotations

import pytest

from dkit.devtools.bench import bench_serve
from dkit.devtools.serve_process import ServeProcess, ServeStartError, free_port


def test_a_failed_start_names_the_exit_and_its_stderr_and_leaves_no_pipe(tmp_path):
    server = ServeProcess(tmp_path / "no-bundle", ["--db", str(tmp_path / "kiosk.sqlite")])
    try:
        assert server.proc.stderr is None and server.proc.stdout is None  # a file, not a pipe nobody reads
        with pytest.raises(ServeStartError, match=r"dkit serve exited [1-9]\d* on start") as caught:
            server.wait_up(timeout=60)
        assert "no-bundle" in str(caught.value) and "no-bundle" in server.stderr_text()
    finally:
        server.close()
    assert not server.log.exists()  # its temporary log went with it


def test_a_given_log_is_kept_and_a_port_is_free(tmp_path):
    port = free_port()
    with ServeProcess(tmp_path / "no-bundle", port=port, log=tmp_path / "logs" / "serve.stderr") as server:
        assert server.port == port and server.url == f"http://127.0.0.1:{port}"
        server.proc.wait(timeout=60)
    assert (tmp_path / "logs" / "serve.stderr").read_text() == server.stderr_text() != ""


def test_bench_serve_scores_every_submission(judge_bundle):
    result = bench_serve(judge_bundle, submissions=12, concurrency=2)
    assert (result["ok"], result["errors"], result["first_error"]) == (12, 0, None)
    assert sum(result["verdicts"].values()) == 12 and result["p99_ms"] >= result["p50_ms"] > 0
