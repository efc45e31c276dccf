"""Configs of the training stages: grounded/ungrounded SFT (steps 1-2) and the joint RAC
objective (step 4), run with TRL's trainers on Ray Train (DeepSpeed optional)."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from rac.config import ConfigError, check_gpu_memory, field_help, gpu_memory_field, nested
from rac.models.factory import ModelConfig
from rac.models.prompts import PROMPT_FORMAT_FILE, PromptFormat

logger = logging.getLogger(__name__)

#: A training run's output_dir (SFT, the joint objective, the detector): the exported model in
#: Hugging Face format, the tokenized datasets the workers read, the metrics of every step.
EXPORT_DIR, DATA_DIR, METRICS_FILE = "model", "data", "metrics.jsonl"


@dataclass
class ScalingSection:
    """Ray Train workers and what each one reserves."""

    num_workers: int = field_help(2, help="Training workers (data-parallel ranks).")
    use_gpu: bool = field_help(False, help="One GPU per worker (NCCL); False trains on CPU (gloo).")
    cpus_per_worker: float = field_help(1.0, help="CPUs reserved per worker.")
    check_resources: bool = field_help(
        True, help="Refuse to start when the cluster cannot place the workers now (turn off on autoscaling "
                   "clusters that add nodes on demand).")
    gpu_memory_gb: float | None = gpu_memory_field()

    def __post_init__(self) -> None:
        check_gpu_memory(self.gpu_memory_gb, "scaling.gpu_memory_gb")
        if self.num_workers < 1:
            raise ConfigError(f"scaling.num_workers must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")


#: Keys of a DeepSpeed config that this project's own keys set (through the Trainer's "auto"):
#: a user's DeepSpeed config may leave them out or say "auto", nothing else.
DEEPSPEED_OWN_KEYS = {
    "train_micro_batch_size_per_gpu": "per_worker_batch_size", "train_batch_size": "per_worker_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "gradient_clipping": "deepspeed.gradient_clipping",
    "bf16": "model.dtype", "fp16": "model.dtype",
}


@dataclass
class DeepSpeedSection:
    """DeepSpeed ZeRO settings."""

    zero_stage: Literal[0, 1, 2, 3] = field_help(
        0, help="ZeRO stage: 0 trains without DeepSpeed (plain data parallel, fastest on CPU); 2 shards optimizer "
                "state and gradients; 3 also parameters (models that do not fit one device).")
    gradient_clipping: float = field_help(1.0, help="Clip the global gradient norm to this value (0: off).")
    config: dict[str, Any] | str | None = field_help(
        None, help="Your DeepSpeed config, merged over the project's (a mapping, or the path of a JSON file "
                   "relative to the job's working directory): offload of optimizer state and parameters "
                   "(zero_optimization.offload_optimizer / offload_param: {device: cpu}), bucket sizes, ... "
                   "Checked with DeepSpeed's own validation before any work. Batch sizes, accumulation, clipping "
                   "and precision come from this config's keys (leave them out, or 'auto').")

    def __post_init__(self) -> None:
        self.merged()  # refuses a config DeepSpeed or this project would not accept, before any work

    def user_config(self) -> dict[str, Any]:
        """The user's DeepSpeed config (``config``) as a mapping ({} when unset)."""
        import json
        from pathlib import Path

        if self.config is None:
            return {}
        if isinstance(self.config, dict):
            return self.config
        path = Path(self.config)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"deepspeed.config {path} cannot be read ({e.strerror}); give the path of a DeepSpeed "
                              f"JSON file or the config as a mapping") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"deepspeed.config {path} is not JSON ({e}); fix the file") from None
        if not isinstance(data, dict):
            raise ConfigError(f"deepspeed.config {path} holds {type(data).__name__}, not a DeepSpeed config object")
        return data

    def merged(self) -> dict[str, Any] | None:
        """The DeepSpeed config transformers' Trainer gets ("auto" values come from the training
        arguments): the project's, with :meth:`user_config` merged over it; None at ZeRO stage 0.

        Raises :class:`ConfigError` naming the key when the user's config sets what this
        project's keys set, disagrees with ``zero_stage``, or fails DeepSpeed's validation.
        """
        user = self.user_config()
        if self.zero_stage == 0:
            if user:
                raise ConfigError("deepspeed.config is set but deepspeed.zero_stage is 0 (no DeepSpeed); set "
                                  "deepspeed.zero_stage to 1, 2 or 3")
            return None
        for key, own in DEEPSPEED_OWN_KEYS.items():
            value = user.get(key)
            if value is not None and value != "auto" and not (isinstance(value, dict) and
                                                             value.get("enabled", "auto") == "auto"):
                raise ConfigError(f"deepspeed.config.{key} is set by this config's '{own}'; leave it out of "
                                  f"deepspeed.config (or write \"auto\")")
        zero = dict(user.get("zero_optimization") or {})
        if zero.setdefault("stage", self.zero_stage) != self.zero_stage:
            raise ConfigError(f"deepspeed.config.zero_optimization.stage is {zero['stage']} but deepspeed.zero_stage "
                              f"is {self.zero_stage}; set the stage with deepspeed.zero_stage alone")
        if self.zero_stage != 3 and (zero.get("offload_param") or {}).get("device", "none") != "none":
            raise ConfigError("deepspeed.config.zero_optimization.offload_param needs ZeRO stage 3; set "
                              "deepspeed.zero_stage: 3, or offload the optimizer state alone (offload_optimizer)")
        ours: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
            # ZeRO-3 exports must hold whole weights, not shards.
            "zero_optimization": {"stage": self.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
            # The Trainer's torch AdamW: DeepSpeed's FusedAdam would compile for a minute on CPU.
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        merged = _deep_merge(ours, user)
        _validate_zero(merged["zero_optimization"])
        return merged

    def offload(self) -> dict[str, str]:
        """Where ZeRO offloads ``optimizer`` state and ``param``\ eters: ``none``, ``cpu`` or ``nvme``."""
        zero = (self.merged() or {}).get("zero_optimization", {})
        return {what: (zero.get(f"offload_{what}") or {}).get("device", "none") for what in ("optimizer", "param")}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _validate_zero(zero: dict[str, Any]) -> None:
    """DeepSpeed's own validation of a ``zero_optimization`` section, as a :class:`ConfigError`."""
    import pydantic
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    try:
        DeepSpeedZeroConfig(**zero)
    except pydantic.ValidationError as e:
        problems = "; ".join(f"zero_optimization.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                             for err in e.errors())
        raise ConfigError(f"deepspeed.config is not a valid DeepSpeed config: {problems}") from None


@dataclass
class TrainConfig:
    """What SFT and the joint objective share.

    A kind of training is a subclass that says what differs: its stage name, TRL's config and
    trainer class, the rows it reads and the examples it shapes them into. The driver
    (:mod:`rac.training.trainer`) and the workers (:mod:`rac.training.worker`) ask the config,
    and never test which kind it is. (Methods import TRL and the readers when called: a config
    is parsed before any of them is needed.)
    """

    #: Name of the stage in run info and results.
    stage: ClassVar[str] = "train"
    #: TRL's training-arguments class of this kind (a field of ``trl``).
    trl_config: ClassVar[str] = "SFTConfig"
    #: Rows of one example in a batch (the memory plan's activations).
    rows_per_example: ClassVar[int] = 1

    input_dir: str = field_help("outputs/demo/retrieve", storage="path",
                                help="Directory of the stage output to train on.")
    output_dir: str = field_help("outputs/train", storage="path",
                                 help="Checkpoints, metrics, the exported model, run info.")
    run_name: str = field_help("train", help="Ray Train run name; a run with the same name and output_dir "
                                             "resumes from its latest checkpoint.")
    checkpoint_storage: str | None = field_help(
        None, storage="path", help="Where Ray Train keeps checkpoints: a directory every node mounts, or a URI "
                                   "(s3://bucket/prefix, gs://bucket/prefix). None: <output_dir>/ray.")
    checkpoint_endpoint: str | None = field_help(
        None, help="Endpoint URL of an S3-compatible store (MinIO, Ceph) for an s3:// checkpoint_storage; "
                   "credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")
    model: ModelConfig = nested(ModelConfig, "Model to start from.")
    max_length: int = field_help(384, help="Tokens of prompt plus answer; passages are trimmed first.")
    max_answer_tokens: int = field_help(48, help="Tokens kept of an answer (question plus end of sequence).")
    learning_rate: float = field_help(5e-5, help="Peak learning rate (AdamW), linear warmup then decay.")
    weight_decay: float = field_help(0.0, help="AdamW weight decay.")
    warmup_ratio: float = field_help(0.05, help="Fraction of the steps spent warming up.")
    num_epochs: int = field_help(1, help="Passes over the training rows.")
    max_steps: int = field_help(-1, help="Optimizer steps; overrides num_epochs when > 0.")
    per_worker_batch_size: int = field_help(4, help="Rows per micro-batch on each worker.")
    gradient_accumulation_steps: int = field_help(1, help="Micro-batches per optimizer step.")
    eval_fraction: float = field_help(0.1, help="Fraction of the training topics held out for evaluation loss.")
    eval_steps: int = field_help(50, help="Evaluate every this many steps (and at the end).")
    save_steps: int = field_help(50, help="Checkpoint every this many steps (and at the end).")
    logging_steps: int = field_help(1, help="Log metrics every this many steps.")
    keep_checkpoints: int = field_help(2, help="Checkpoints kept on storage.")
    max_failures: int = field_help(1, help="Worker failures Ray Train recovers from (from the last checkpoint).")
    seed: int = field_help(0, help="Seed of initialisation order, data order and dropout.")
    report_to: list[str] = field_help([], help="Extra metric sinks of transformers' Trainer: tensorboard, mlflow "
                                              "(each needs its package).")
    group_by_length: bool = field_help(True, help="Batches of rows of similar length (little compute spent on "
                                                  "padding); the order stays a function of (seed, epoch).")
    gradient_checkpointing: bool = field_help(
        False, help="Recompute activations in the backward pass instead of keeping them (about a third more "
                    "compute for a fraction of the activation memory; the memory plan counts it). Turns "
                    "share_prompt off, and the run log says so.")
    trainer_args: dict[str, Any] = field_help(
        {}, help="Any other field of TRL's SFTConfig / DPOConfig (transformers' TrainingArguments), passed through "
                 "as is: lr_scheduler_type, optim, gradient_checkpointing_kwargs, ...")
    scaling: ScalingSection = nested(ScalingSection, "Workers and resources.")
    deepspeed: DeepSpeedSection = nested(DeepSpeedSection, "DeepSpeed ZeRO.")

    def __post_init__(self) -> None:
        if self.max_length <= self.max_answer_tokens:
            raise ConfigError(f"max_length ({self.max_length}) must exceed max_answer_tokens "
                              f"({self.max_answer_tokens}) to leave room for the prompt")
        for name in ("per_worker_batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps",
                     "logging_steps", "num_epochs", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        unknown = set(self.report_to) - {"tensorboard", "mlflow"}
        if unknown:
            raise ConfigError(f"report_to accepts tensorboard and mlflow, got {sorted(unknown)}")
        if self.checkpoint_endpoint and not (self.checkpoint_storage or "").startswith("s3://"):
            raise ConfigError(f"checkpoint_endpoint is the endpoint of an S3-compatible store; set checkpoint_storage "
                              f"to s3://bucket/prefix, got {self.checkpoint_storage!r}")
        if self.trainer_args:
            check_trainer_args(self.trainer_args, self.trl_config)

    def read_rows(self) -> list[dict[str, Any]]:
        """The rows this kind trains on, sorted by id, error rows left out."""
        raise NotImplementedError

    def prompt_format(self) -> str:
        """The prompt format this run trains with (:mod:`rac.models.prompts`): the one recorded in
        the model it starts from."""
        from rac.models.prompts import read_prompt_format

        return read_prompt_format(self.model.path)

    def examples(self, rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
        """``rows`` as the token ids TRL's trainer of this kind takes (:mod:`rac.training.data`)."""
        raise NotImplementedError

    def trl_arguments(self) -> dict[str, Any]:
        """Fields of :attr:`trl_config` this kind sets beyond the shared ones."""
        return {}

    def trainer(self, **kwargs: Any) -> Any:
        """TRL's trainer of this kind (the project's subclass, :mod:`rac.training.engine`) on ``kwargs``."""
        raise NotImplementedError

    def holds_reference_model(self) -> bool:
        """Whether each worker keeps a frozen reference model beside the one it trains."""
        return False


@dataclass
class PromptSection:
    """How prompts are fed to the model."""

    format: PromptFormat = field_help(
        "plain", help="plain: the prompt's text after BOS (where the tokenizer puts one); chat: the text as a user "
                      "turn of the tokenizer's chat template (instruct models). Recorded with the trained model "
                      "(rac_prompt.json), which every later stage (RAC, decoding, evaluation, serving) reads.")


@dataclass
class SFTConfig(TrainConfig):
    """``python -m jobs.train_sft``: p_theta0 (grounded) or p_uncond (ungrounded) on T1."""

    grounded: bool = field_help(True, help="True trains p_theta0 on (query, passages); False p_uncond on the "
                                           "query alone.")
    split: str = field_help("t1", help="Split of the retrieved rows to train on.")
    prompt: PromptSection = nested(PromptSection, "Prompt format.")

    def prompt_format(self) -> str:
        """``prompt.format``; refused where the starting model was trained with another one."""
        recorded = super().prompt_format()
        if recorded != self.prompt.format and (Path(self.model.path) / PROMPT_FORMAT_FILE).is_file():
            raise ConfigError(f"prompt.format is {self.prompt.format} but model.path {self.model.path} was trained "
                              f"with prompt format {recorded}; set prompt.format: {recorded}")
        return self.prompt.format

    stage: ClassVar[str] = "train_sft"
    trl_config: ClassVar[str] = "SFTConfig"

    def read_rows(self) -> list[dict[str, Any]]:
        """The split's rows with a gold question."""
        from rac.retrieval import read_retrieved

        rows = read_retrieved(self.input_dir, [self.split],
                              ("id", "query", "passages", "question", "split", "topic_id"))
        return [r for r in rows.to_pylist() if not r.get("error") and r["question"]]

    def examples(self, rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
        from rac.training.data import sft_examples

        return sft_examples(rows, tokenizer, self.grounded, self.max_length, self.max_answer_tokens)

    def trl_arguments(self) -> dict[str, Any]:
        return {"completion_only_loss": True}

    def trainer(self, **kwargs: Any) -> Any:
        from rac.training.engine import RACSFTTrainer

        return RACSFTTrainer(**kwargs)


@dataclass
class RACConfig(TrainConfig):
    """``python -m jobs.train_rac``: L_RAC = gamma * L_DPO + (1 - gamma) * L_SFT on T2, from p_theta0."""

    gamma: float = field_help(0.5, help="Weight of the preference term; 1 - gamma weighs the SFT term "
                                        "(TRL: loss_type=[loss_type, 'sft'], loss_weights=[gamma, 1 - gamma]).")
    beta: float = field_help(0.1, help="Temperature beta of the preference loss (tau for IPO).")
    loss_type: str = field_help("sigmoid", help="Preference loss, any name TRL's DPOConfig accepts: sigmoid (DPO), "
                                                "ipo, hinge, robust, ...")
    precompute_ref_logps: bool = field_help(
        True, help="Compute the reference model's log-probs once before training instead of a second forward "
                   "every step (no reference model kept in memory).")
    share_prompt: bool = field_help(
        True, help="Run each pair's prompt once and both questions on its key/value cache, instead of the prompt "
                   "twice (same loss up to float rounding; off with gradient_checkpointing).")

    stage: ClassVar[str] = "train_rac"
    trl_config: ClassVar[str] = "DPOConfig"
    rows_per_example: ClassVar[int] = 2  # the chosen and the rejected question

    def holds_reference_model(self) -> bool:
        return not self.precompute_ref_logps

    def read_rows(self) -> list[dict[str, Any]]:
        """The T2 rows with both a chosen and a rejected question."""
        from rac.decoding.stage import read_negatives

        rows = read_negatives(self.input_dir, ["id", "query", "passages", "chosen", "rejected", "topic_id"])
        rows = rows.to_pylist()
        return [r for r in rows if not r.get("error") and r["chosen"] and r["rejected"]]

    def examples(self, rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
        from rac.training.data import preference_examples

        return preference_examples(rows, tokenizer, self.max_length, self.max_answer_tokens)

    def trl_arguments(self) -> dict[str, Any]:
        return {"loss_type": [self.loss_type, "sft"], "loss_weights": [self.gamma, 1 - self.gamma],
                "beta": self.beta, "precompute_ref_log_probs": self.precompute_ref_logps}

    def trainer(self, **kwargs: Any) -> Any:
        from rac.training.engine import RACDPOTrainer

        return RACDPOTrainer(**kwargs, share_prompt=self.shares_prompt())

    def shares_prompt(self) -> bool:
        """Whether each pair's prompt runs once (``share_prompt``, unless gradient checkpointing is
        on: the shared-prompt forward does not run under it; the log says so)."""
        if self.share_prompt and self.gradient_checkpointing:
            logger.info("share_prompt is off: gradient_checkpointing is on, and the shared-prompt forward does not "
                        "run under it (each pair's prompt runs twice)")
            return False
        return self.share_prompt

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if self.loss_type != "sigmoid" and self.loss_type not in preference_losses():
            raise ConfigError(f"loss_type {self.loss_type!r} is not a preference loss of TRL's DPOTrainer; "
                              f"use one of {', '.join(preference_losses())}")


#: Training-argument fields this project sets from its own keys (trainer_args may not set them).
OWN_KEYS = {
    "output_dir": "output_dir", "run_name": "run_name", "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_ratio", "num_train_epochs": "num_epochs", "max_steps": "max_steps",
    "per_device_train_batch_size": "per_worker_batch_size", "per_device_eval_batch_size": "per_worker_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "eval_steps": "eval_steps",
    "save_steps": "save_steps", "logging_steps": "logging_steps", "seed": "seed", "data_seed": "seed",
    "report_to": "report_to", "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing", "bf16": "model.dtype", "fp16": "model.dtype",
    "use_cpu": "scaling.use_gpu",
    "deepspeed": "deepspeed", "max_grad_norm": "deepspeed.gradient_clipping", "max_length": "max_length",
    "train_sampling_strategy": "group_by_length", "loss_type": "loss_type", "loss_weights": "gamma",
    "beta": "beta", "precompute_ref_log_probs": "precompute_ref_logps", "save_total_limit": "keep_checkpoints",
}


@cache
def _trl_fields(config_class: str) -> frozenset[str]:
    import dataclasses

    import trl

    return frozenset(f.name for f in dataclasses.fields(getattr(trl, config_class)))


@cache
def preference_losses() -> tuple[str, ...]:
    """The preference losses the installed TRL's ``DPOConfig.loss_type`` documents (all but 'sft')."""
    import dataclasses

    from trl import DPOConfig

    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    return tuple(n for n in dict.fromkeys(re.findall(r"`'(\w+)'`", help_text)) if n != "sft")


def check_trainer_args(args: dict[str, Any], config_class: str) -> None:
    """Refuse a ``trainer_args`` key TRL's ``config_class`` lacks, or one this config owns."""
    fields = _trl_fields(config_class)
    for key in args:
        if key in OWN_KEYS:
            raise ConfigError(f"trainer_args.{key}: set it with this config's own key '{OWN_KEYS[key]}'")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"trainer_args.{key} is not a field of TRL's {config_class}.{hint}")
