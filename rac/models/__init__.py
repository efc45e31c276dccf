"""Models and prompts: the model factory, the grounded/ungrounded prompts, greedy generation."""

from rac.models.factory import (
    LoraConfig,
    ModelConfig,
    ModelDirError,
    check_model_dir,
    load_model,
    load_tokenizer,
    resolve_device,
)
from rac.models.prompts import (
    Prompt,
    PromptTooLongError,
    build_prompt,
    completion_text,
    decode_whole,
    prompt_token_ids,
    question_from_text,
)

__all__ = ["LoraConfig", "ModelConfig", "ModelDirError", "Prompt", "PromptTooLongError", "build_prompt",
           "check_model_dir", "completion_text", "decode_whole", "load_model", "load_tokenizer", "prompt_token_ids",
           "question_from_text", "resolve_device"]
