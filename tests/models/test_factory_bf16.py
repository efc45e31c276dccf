"""bf16 asked for on a CPU without native bf16 matmuls: the reason, the preflight warning."""

import logging

import pytest

from rac import machine
from rac.models.factory import resolve_dtype, slow_bf16_reason, warn_slow_bf16


@pytest.fixture
def no_bf16(monkeypatch):
    """This CPU as one without AVX512-BF16 or AMX, where bf16 ran at 0.0143x fp32."""
    monkeypatch.setattr(machine, "bf16_supported", lambda: False)
    monkeypatch.setattr(machine, "bf16_speed_ratio", lambda: 0.0143)


def test_bf16_without_support_has_a_reason_with_the_measured_ratio(no_bf16):
    reason = slow_bf16_reason("bfloat16", use_gpu=False)
    assert "without native bf16 matmuls" in reason and "0.0143x the float32 speed" in reason
    assert slow_bf16_reason("float32", use_gpu=False) is None
    assert slow_bf16_reason("auto", use_gpu=False) is None
    assert resolve_dtype("auto", use_gpu=False) == "float32"


def test_bf16_with_support_has_no_reason(monkeypatch):
    monkeypatch.setattr(machine, "bf16_supported", lambda: True)
    assert slow_bf16_reason("bfloat16", use_gpu=False) is None
    assert resolve_dtype("auto", use_gpu=False) == "bfloat16"


def test_the_ratio_is_measured():
    assert machine.bf16_speed_ratio(size=64, min_time_s=0.01) > 0


def test_warning_names_the_key_and_the_ratio(no_bf16, caplog):
    with caplog.at_level(logging.WARNING, logger="rac.models.factory"):
        assert warn_slow_bf16("bfloat16", use_gpu=False, key="dtype")
    assert "dtype is bfloat16 on a CPU without native bf16" in caplog.text
    assert "0.0143x" in caplog.text and "proceeds as asked" in caplog.text
