"""SIGTERM is a clean stop: ``ray job stop``, Kubernetes and ``timeout`` all send it to the driver."""

import signal
import time

import pytest

from rac.testing.tiny import save_tiny_model
from tests.e2e.procs import alive, descendants, kill_group, session_pids, start_job, wait_until

pytestmark = pytest.mark.slow  # a training job stopped by SIGTERM: CI's whole suite, not the quick `make test`


def test_sigterm_during_training_stops_the_run_and_leaves_no_process(tmp_path):
    base = save_tiny_model(tmp_path / "tiny")
    run = tmp_path / "run"
    args = ["--config", "configs/demo.yaml", "--run_dir", str(run), "--base_model", str(base),
            "--stages", "[index, retrieve, sft_grounded]", "--show", "0",
            "--sft.max_steps", "500", "--sft.save_steps", "2", "--sft.scaling.num_workers", "1"]
    log = tmp_path / "job.log"
    proc = start_job("jobs.pipeline", args, log)
    try:
        metrics = run / "sft_grounded" / "metrics.jsonl"
        assert wait_until(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2, proc, timeout=300), \
            log.read_text()[-3000:]
        workers = descendants(proc.pid)  # the local Ray the driver started, its Train controller and worker
        assert workers
        proc.send_signal(signal.SIGTERM)  # to the driver alone, as `timeout` does
        assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
        text = log.read_text()
        assert "stopped: got SIGTERM" in text and "Traceback" not in text.split("stopped: got SIGTERM")[-1]
        # Nothing of the run is left: not the driver's local Ray, not a Train controller or worker.
        deadline = time.monotonic() + 60
        while session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert session_pids(proc.pid) == []
        assert not [pid for pid, _ in workers if alive(pid)], [w for w in workers if alive(w[0])]
        # The outputs are as a rerun expects: finished stages keep their manifests, the stopped one has none.
        assert (run / "retrieve" / "manifest.json").is_file() and not (run / "sft_grounded" / "manifest.json").exists()
    finally:
        if proc.poll() is None:
            kill_group(proc)
