"""TRL's trainers on real local Ray Train (2 CPU workers, gloo; DeepSpeed ZeRO-2/3 and plain
data parallel), with a tiny model."""

import dataclasses
import math

import pyarrow.parquet as pq
import pytest
import torch

from rac.config import ConfigError, parse_config
from rac.data.config import DataConfig
from rac.data.loaders import DataFormatError
from rac.data.prepare import prepare_data
from rac.data.schema import records_to_table
from rac.models import LoraConfig, ModelConfig, load_tokenizer
from rac.retrieval import EmbeddedBM25Retriever
from rac.testing.tiny import save_tiny_model
from rac.training import RACConfig, SFTConfig, read_metrics, run_training
from rac.training.config import DeepSpeedSection, ScalingSection
from rac.training.data import load_dataset_dir
from rac.training.trainer import holdout_by_topic, steps_per_epoch

pytestmark = pytest.mark.slow  # Ray Train runs: CI's whole suite, not the quick `make test`


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """Retrieved demo rows (record schema) and T2 pairs, written without Ray."""
    root = tmp_path_factory.mktemp("train-data")
    loaded, corpus = prepare_data(DataConfig())
    EmbeddedBM25Retriever.build(corpus, root / "bm25")
    hits = EmbeddedBM25Retriever(root / "bm25").search([r["query"] for r in loaded.records], 3)
    records = [{**r, "passages": h} for r, h in zip(loaded.records, hits, strict=True)]
    (root / "retrieved").mkdir()
    pq.write_table(records_to_table(records), root / "retrieved" / "part-0.parquet")
    # T2 stand-in: the gold question against the question of another facet of the same topic.
    by_topic = {}
    for r in records:
        by_topic.setdefault(r["topic_id"], []).append(r)
    pairs = [{"id": r["id"], "query": r["query"], "passages": r["passages"], "topic_id": r["topic_id"],
              "chosen": r["question"], "rejected": group[(i + 1) % len(group)]["question"], "error": None}
             for group in by_topic.values() for i, r in enumerate(group)]
    import pyarrow as pa

    (root / "negatives").mkdir()
    pq.write_table(pa.Table.from_pylist(pairs), root / "negatives" / "part-0.parquet")
    model = save_tiny_model(root / "tiny-model")
    return root, model


def sft_config(demo_dir, out, **kw):
    root, model = demo_dir
    base = SFTConfig(input_dir=str(root / "retrieved"), output_dir=str(out), run_name="sft",
                     model=ModelConfig(path=str(model), dtype="float32"), per_worker_batch_size=4, learning_rate=2e-3,
                     max_length=256, eval_steps=4, logging_steps=1, max_failures=0,
                     scaling=ScalingSection(num_workers=2), deepspeed=DeepSpeedSection(zero_stage=0))
    return dataclasses.replace(base, **kw)


def test_sft_lowers_loss_resumes_where_it_stopped_and_exports(ray_local, demo_dir, tmp_path):
    probe = sft_config(demo_dir, tmp_path / "probe")
    per_epoch = steps_per_epoch(probe, len(holdout_by_topic(probe.read_rows(), probe.eval_fraction, probe.seed)[0]))
    assert per_epoch >= 3
    total = per_epoch + 3
    # Uninterrupted run.
    full = sft_config(demo_dir, tmp_path / "full", max_steps=total, save_steps=per_epoch)
    summary = run_training(full)
    ref = {m["step"]: m for m in read_metrics(full.output_dir)}
    assert sorted(ref) == list(range(1, total + 1))
    assert ref[total]["loss"] < ref[1]["loss"] - 0.1
    assert "eval_loss" in ref[4] and ref[total]["epoch"] > 1
    # The rows were tokenized once, by the driver, into a dataset on the run's storage.
    train_set = load_dataset_dir(tmp_path / "full" / "data" / "train")
    assert {"input_ids", "labels", "length"} <= set(train_set.column_names)
    # Killed one step past the checkpoint at the epoch boundary, then run again.
    cut = sft_config(demo_dir, tmp_path / "cut", max_steps=total, save_steps=per_epoch)
    with pytest.raises(Exception):  # noqa: B017 - Ray's error type for a dead worker varies
        run_training(cut, kill_at_step=per_epoch + 1)
    run_training(cut)
    steps = [m["step"] for m in read_metrics(cut.output_dir)]
    assert steps == list(range(1, total + 1)), "a step was repeated or skipped"
    for m in read_metrics(cut.output_dir):
        assert m["loss"] == pytest.approx(ref[m["step"]]["loss"], abs=1e-5), f"step {m['step']} differs"
    # The exported model reloads with from_pretrained, generates, and is not the initial model.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(summary.details["model_dir"])
    tok = load_tokenizer(summary.details["model_dir"])
    out = model.generate(**tok(["Query: jaguar\nClarifying question:"], return_tensors="pt"), max_new_tokens=5,
                         do_sample=False)
    assert out.shape[1] > 5
    initial = AutoModelForCausalLM.from_pretrained(full.model.path)
    assert not torch.equal(model.lm_head.weight, initial.lm_head.weight)


@pytest.fixture
def s3_bucket(tmp_path, monkeypatch):
    """A real S3-API server (moto's standalone server) on 127.0.0.1 with an empty bucket; the
    driver's AWS_* variables name its test credentials. Returns the endpoint URL."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.fs as pafs

    from rac.testing.es_server import free_port, wait_http

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint, timeout=60, proc=proc)
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                          region="us-east-1", allow_bucket_creation=True).create_dir("rac-ckpt")
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_sft_checkpoints_in_object_storage_and_resumes_from_it(ray_local, demo_dir, tmp_path, s3_bucket):
    import pyarrow.fs as pafs
    from safetensors.torch import load_file

    probe = sft_config(demo_dir, tmp_path / "probe")
    per_epoch = steps_per_epoch(probe, len(holdout_by_topic(probe.read_rows(), probe.eval_fraction, probe.seed)[0]))
    total = per_epoch + 2

    def cfg(name):
        return sft_config(demo_dir, tmp_path / name, max_steps=total, save_steps=per_epoch,
                          checkpoint_storage=f"s3://rac-ckpt/{name}", checkpoint_endpoint=s3_bucket)

    full = run_training(cfg("full"))
    cut = cfg("cut")
    with pytest.raises(Exception):  # noqa: B017 - Ray's error type for a dead worker varies
        run_training(cut, kill_at_step=per_epoch + 1)
    s3 = pafs.S3FileSystem(endpoint_override=s3_bucket, access_key="testing", secret_key="testing",
                           region="us-east-1")
    stored = [i.path for i in s3.get_file_info(pafs.FileSelector("rac-ckpt/cut/sft", recursive=True))
              if i.path.endswith("trainer_state.json")]
    assert stored, "no checkpoint in the bucket"
    assert not (tmp_path / "cut" / "ray").exists()  # nothing on the local storage path
    resumed = run_training(cut)
    assert resumed.details["checkpoint"].startswith("rac-ckpt/cut/sft/")
    steps = [m["step"] for m in read_metrics(cut.output_dir)]
    assert steps == list(range(1, total + 1)), "a step was repeated or skipped"
    a, b = (load_file(f"{s.details['model_dir']}/model.safetensors") for s in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rac_config(demo_dir, out, **kw):
    root, model = demo_dir
    base = RACConfig(input_dir=str(root / "negatives"), output_dir=str(out), run_name="rac",
                     model=ModelConfig(path=str(model), dtype="float32"), per_worker_batch_size=4, learning_rate=2e-3,
                     max_length=256, max_steps=4, save_steps=2, eval_steps=4, gamma=0.5, beta=0.1, warmup_ratio=0.0,
                     scaling=ScalingSection(num_workers=2), deepspeed=DeepSpeedSection(zero_stage=3))
    return dataclasses.replace(base, **kw)


def test_rac_zero3_survives_a_killed_worker_and_logs_each_term(ray_local, demo_dir, tmp_path):
    cfg = rac_config(demo_dir, tmp_path, max_failures=1)
    summary = run_training(cfg, kill_at_step=3)  # recovers from the step-2 checkpoint
    metrics = read_metrics(cfg.output_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert {"loss", "pref_loss", "sft_loss", "reward_margin", "reward_accuracy"} <= set(m)
        assert m["loss"] == pytest.approx(0.5 * m["pref_loss"] + 0.5 * m["sft_loss"], abs=1e-4)
    # Step 1 starts from the reference itself: the precomputed reference log-probs equal the
    # policy's, so every reward is 0 and the DPO loss is log 2.
    assert metrics[0]["pref_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert metrics[-1]["sft_loss"] < metrics[0]["sft_loss"]
    assert all(abs(m["reward_margin"]) > 1e-4 for m in metrics[1:])  # the policy left the reference
    assert {"eval_loss", "eval_pref_loss", "eval_sft_loss", "eval_reward_margin"} <= set(metrics[-1])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(summary.details["model_dir"])  # ZeRO-3 weights gathered
    initial = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in initial.parameters())
    assert not torch.equal(model.lm_head.weight, initial.lm_head.weight)


@pytest.mark.slow
def test_reference_model_forward_matches_precomputed(ray_local, demo_dir, tmp_path):
    """Without DeepSpeed: a frozen reference model's forward every step gives the very losses
    of the precomputed reference log-probs, step by step. ``slow`` (two Ray Train runs, about 50 s):
    in the quick suite, the training forward that policy and reference both run is
    checked against TRL's own in seconds by tests/training/test_forward.py."""
    runs = {}
    for precompute in (True, False):
        cfg = rac_config(demo_dir, tmp_path / str(precompute), precompute_ref_logps=precompute, max_steps=3,
                         save_steps=3, deepspeed=DeepSpeedSection(zero_stage=0))
        run_training(cfg)
        runs[precompute] = read_metrics(cfg.output_dir)
    assert [m["step"] for m in runs[True]] == [m["step"] for m in runs[False]] == [1, 2, 3]
    for pre, fwd in zip(runs[True], runs[False], strict=True):
        for key in ("loss", "pref_loss", "sft_loss", "reward_margin"):
            assert pre[key] == pytest.approx(fwd[key], abs=1e-5), f"step {pre['step']} {key}"
    assert abs(runs[True][-1]["reward_margin"]) > 1e-3  # the steps moved the policy: the comparison has teeth


def test_lora_bf16_trains_merges_exports_reloads_and_generates(ray_local, demo_dir, tmp_path):
    cfg = sft_config(demo_dir, tmp_path, max_steps=3, save_steps=3, eval_steps=3,
                     model=ModelConfig(path=str(demo_dir[1]), dtype="bfloat16",
                                       lora=LoraConfig(enabled=True, r=4, alpha=8)),
                     deepspeed=DeepSpeedSection(zero_stage=0), trainer_args={"lr_scheduler_type": "constant"},
                     report_to=["tensorboard"])
    summary = run_training(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert [m["learning_rate"] for m in metrics] == [2e-3] * 3  # trainer_args passed through
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert b"train/loss" in events and b"eval/loss" in events  # the TensorBoard sink got the scalars
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(summary.details["model_dir"])
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged, a plain model
    initial = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[q], initial.state_dict()[q])  # the adapter's update is in
    torch.testing.assert_close(model.state_dict()["model.embed_tokens.weight"],
                               initial.state_dict()["model.embed_tokens.weight"])  # untargeted weights kept
    tok = load_tokenizer(summary.details["model_dir"])
    out = model.generate(**tok(["Query: jaguar\nClarifying question:"], return_tensors="pt"), max_new_tokens=5,
                         do_sample=False)
    assert out.shape[1] > 5


def test_bad_configs_fail_before_any_worker_starts(ray_local, demo_dir, tmp_path):
    root, model = demo_dir
    with pytest.raises(ConfigError, match=r"gamma must be in \[0, 1\], got 1.5"):
        parse_config(RACConfig, ["--gamma", "1.5"])
    with pytest.raises(ConfigError, match="loss_type 'ipoo' is not a preference loss.*sigmoid, hinge, ipo"):
        parse_config(RACConfig, ["--loss_type", "ipoo"])
    assert parse_config(RACConfig, ["--loss_type", "ipo"]).loss_type == "ipo"
    with pytest.raises(ConfigError, match="trainer_args.lr_schedule_type is not a field of TRL's DPOConfig.*"
                                          "lr_scheduler_type"):
        parse_config(RACConfig, ["--trainer_args", "{lr_schedule_type: cosine}"])
    with pytest.raises(ConfigError, match="trainer_args.per_device_train_batch_size: set it with.*"
                                          "per_worker_batch_size"):
        parse_config(SFTConfig, ["--trainer_args", "{per_device_train_batch_size: 2}"])
    with pytest.raises(DataFormatError, match=r"columns \['chosen', 'rejected'\] are missing"):
        run_training(rac_config(demo_dir, tmp_path / "a", input_dir=str(root / "retrieved")))
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        run_training(rac_config(demo_dir, tmp_path / "b", model=ModelConfig(path=str(tmp_path / "nope"))))
    with pytest.raises(ConfigError, match="3 workers x 1 CPU = 3 CPUs, the cluster has 2"):
        run_training(rac_config(demo_dir, tmp_path / "c", scaling=ScalingSection(num_workers=3)))
    assert not any((tmp_path / d / "ray").exists() for d in "abc")
