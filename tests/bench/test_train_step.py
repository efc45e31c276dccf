"""bench/train_step.py skips bf16 variants on a CPU without native bf16, with the reason."""

from bench import train_step
from rac import machine


def test_bf16_variants_are_skipped_with_the_reason_where_bf16_is_unsupported(monkeypatch):
    monkeypatch.setattr(machine, "bf16_supported", lambda: False)
    monkeypatch.setattr(machine, "bf16_speed_ratio", lambda: 0.0143)
    skipped = train_step.skipped_variants(["trl_fp32", "trl_bf16", "trl_bf16_1x2"])
    assert set(skipped) == {"trl_bf16", "trl_bf16_1x2"}
    assert all("without native bf16 matmuls" in r and "0.0143x" in r for r in skipped.values())


def test_nothing_is_skipped_where_bf16_is_supported(monkeypatch):
    monkeypatch.setattr(machine, "bf16_supported", lambda: True)
    assert train_step.skipped_variants(list(train_step.VARIANTS)) == {}
