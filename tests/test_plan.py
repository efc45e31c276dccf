"""The memory plan of the shipped GPU configs (``python -m jobs.plan``), and the same check in
every GPU stage's preflight."""

import pytest
import yaml

from rac.config import ConfigError, from_dict, load_yaml, parse_config
from rac.models.memory import GPU_MEMORY_GB
from rac.pipeline import PipelineConfig
from rac.plan import pipeline_plans, serve_config
from tests.conftest import REPO

LLAMA = REPO / "configs" / "llama-3.1-8b.yaml"
RAYSERVICE = REPO / "cluster" / "rayservice.yaml"


def _gpu_size_of_the_launchers_gpu_nodes() -> float:
    node = load_yaml(REPO / "cluster" / "cluster.yaml")["available_node_types"]["gpu_workers"]
    (kind,) = [k.split(":", 1)[1] for k in node["resources"] if k.startswith("accelerator_type:")]
    return GPU_MEMORY_GB[kind]


def test_the_shipped_8b_config_fits_the_clusters_gpus():
    gpu = _gpu_size_of_the_launchers_gpu_nodes()
    assert gpu == 80
    data = load_yaml(LLAMA)
    # Every GPU section names the size of the cluster's GPU nodes.
    sizes = [data["sft"]["scaling"]["gpu_memory_gb"], data["rac"]["scaling"]["gpu_memory_gb"],
             data["negatives"]["pool"]["gpu_memory_gb"], data["evaluate"]["pool"]["gpu_memory_gb"]]
    assert sizes == [gpu] * 4
    cfg = parse_config(PipelineConfig, ["--config", str(LLAMA)])
    plans = pipeline_plans(cfg, serve_config(RAYSERVICE))
    assert {p.stage for p in plans} >= {"sft_grounded", "sft_ungrounded", "negatives", "train_rac", "evaluate",
                                        "serve"}
    for plan in plans:
        assert plan.use_gpu and plan.checked and plan.fits, plan.row()
    assert next(p for p in plans if p.stage == "serve").gpu_gb == GPU_MEMORY_GB["L4"]
    service = yaml.safe_load(RAYSERVICE.read_text())["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert any(g["template"]["spec"].get("nodeSelector", {}).get("nvidia.com/gpu.product") == "NVIDIA-L4"
               for g in service)


def test_the_door_refuses_the_old_fp32_a10g_plan_with_exit_2(capsys):
    from jobs.plan import main

    cfg = parse_config(PipelineConfig, ["--config", str(LLAMA), "--negatives.dtype", "float32",
                                        "--negatives.pool.gpu_memory_gb", str(GPU_MEMORY_GB["A10G"])])
    with pytest.raises(SystemExit) as e:
        main(cfg, None)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert "| negatives |" in out and "DOES NOT FIT" in out
    assert "negatives does not fit the GPU" in err and "24 GB GPU" in err


def test_a_base_model_without_config_and_without_a_shape_file_is_a_config_error():
    cfg = parse_config(PipelineConfig, ["--config", str(LLAMA), "--base_model", "/nonexistent/model",
                                        "--sft.model.shape", "null"])
    with pytest.raises(ConfigError, match="sft.model.shape"):
        pipeline_plans(cfg)


# ----------------------------------------------------------------------------- preflights


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from rac.testing.tiny import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("plan") / "tiny"))


TOO_SMALL = 1e-4  # GB: no model fits


def test_training_preflight_refuses_a_plan_that_does_not_fit(tiny_model, tmp_path):
    from rac.training.config import SFTConfig
    from rac.training.trainer import preflight

    cfg = from_dict(SFTConfig, {"model": {"path": tiny_model}, "input_dir": str(tmp_path / "nothing"),
                                "scaling": {"num_workers": 1, "use_gpu": True, "gpu_memory_gb": TOO_SMALL}})
    with pytest.raises(ConfigError, match="train_sft does not fit the GPU.*scaling.gpu_memory_gb"):
        preflight(cfg)  # before the rows are read: the input dir does not exist


def test_negatives_evaluation_and_serving_refuse_a_plan_that_does_not_fit(tiny_model, tmp_path):
    from rac.decoding.config import NegativesConfig
    from rac.decoding.stage import run_generate_negatives
    from rac.evaluation.config import EvaluateConfig
    from rac.evaluation.stage import check_inputs
    from rac.serving.config import ServeConfig
    from serve.app import check_paths

    pool = {"num_gpus": 1, "gpu_memory_gb": TOO_SMALL}
    negatives = from_dict(NegativesConfig, {"grounded_model": tiny_model, "ungrounded_model": tiny_model,
                                            "input_dir": str(tmp_path / "nothing"), "pool": pool})
    with pytest.raises(ConfigError, match="negatives does not fit the GPU.*pool.gpu_memory_gb"):
        run_generate_negatives(negatives)
    evaluate = from_dict(EvaluateConfig, {"systems": [{"name": "m", "path": tiny_model}], "embedding_model": None,
                                          "pool": pool})
    with pytest.raises(ConfigError, match="evaluate does not fit the GPU"):
        check_inputs(evaluate)
    serving = from_dict(ServeConfig, {"model_path": tiny_model,
                                      "generator": {"deployment": {"num_gpus": 1, "gpu_memory_gb": TOO_SMALL}}})
    with pytest.raises(ConfigError, match="serve does not fit the GPU.*generator.deployment.gpu_memory_gb"):
        check_paths(serving)


def test_the_pipeline_door_refuses_a_plan_that_does_not_fit_before_any_work(tmp_path, capsys):
    """The pipeline job checks every GPU stage's plan before the first stage: exit 2, the numbers,
    the settings that fit, and no run directory."""
    from jobs._door import run
    from jobs.pipeline import main
    from rac.plan import pipeline_preflight

    base = tmp_path / "llama-3.1-8b"  # the shape alone: enough for the plan, no weights needed
    base.mkdir()
    (base / "config.json").write_text((REPO / "configs" / "models" / "llama-3.1-8b.json").read_text())
    argv = ["--config", str(LLAMA), "--base_model", str(base), "--run_dir", str(tmp_path / "run"),
            "--negatives.dtype", "float32", "--negatives.pool.gpu_memory_gb", str(GPU_MEMORY_GB["A10G"])]
    assert run(PipelineConfig, lambda cfg: main(cfg, None), argv=argv, preflight=pipeline_preflight) == 2
    err = capsys.readouterr().err
    assert "config error: negatives does not fit the GPU: the memory plan needs" in err
    assert "Settings that fit:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("door", ["train_sft", "train_rac"])
def test_a_stage_door_refuses_a_plan_that_does_not_fit_before_any_work(door, tmp_path, capsys):
    """A stage's own job checks its memory plan before Ray starts: exit 2, as a bad config does."""
    import importlib

    from jobs._door import run

    model = tmp_path / "llama-3.1-8b"  # the shape alone: the plan needs no weights
    model.mkdir()
    (model / "config.json").write_text((REPO / "configs" / "models" / "llama-3.1-8b.json").read_text())
    module = importlib.import_module(f"jobs.{door}")
    config_cls = module.SFTConfig if door == "train_sft" else module.RACConfig
    argv = ["--model.path", str(model), "--output_dir", str(tmp_path / "out"), "--scaling.use_gpu", "true",
            "--scaling.gpu_memory_gb", "24"]
    assert run(config_cls, module.main, argv=argv, preflight=module.preflight) == 2
    err = capsys.readouterr().err
    assert "config error: train" in err and "does not fit the GPU" in err and "scaling.gpu_memory_gb" in err
    assert not (tmp_path / "out").exists()
