"""bench/gpu_check.py runs every stage on the CPU too, so it cannot rot between GPU runs; the
GPU-only checks say "n/a" there instead of passing."""

import json

import pytest

from bench import gpu_check


def _report(out: str) -> dict:
    """The JSON report, after whatever the libraries printed to stdout before it."""
    return json.loads(out[out.index('{\n  "device"'):])


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_cpu(capsys, one_torch_thread):
    assert gpu_check.main(["--device", "cpu"]) == 0
    report = _report(capsys.readouterr().out)
    assert report["ok"] and report["failed_checks"] == [] and report["machine"]["cpu_model"]
    stages = report["stages"]
    assert list(stages) == ["sft_grounded", "negatives", "train_rac", "evaluate", "serve"]
    for name, result in stages.items():
        assert result["checks"]["on_device"] is True and result["checks"]["dtype"] is True, name
        assert result["dtypes"] == ["float32"] and result["devices"] == ["cpu"], name
        assert result["checks"]["peak_within_plan"] == "n/a" and result["plan_mb"] > 0, name
    assert stages["negatives"]["checks"]["no_host_fallback"] == "n/a"
    assert stages["negatives"]["generated_tokens"] == 8 * 16
    assert stages["train_rac"]["precision"] == "float32" and stages["train_rac"]["loss"] > 0


def test_a_missing_gpu_is_reported_not_faked(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 1
    assert "no CUDA device is visible" in _report(capsys.readouterr().out)["error"]
