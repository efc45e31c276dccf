"""Models and prompts: the model factory and the grounded/ungrounded prompts."""

from rac.models.factory import LoraConfig, ModelConfig, load_model, load_tokenizer
from rac.models.prompts import (
    Prompt,
    PromptTooLongError,
    build_prompt,
    completion_text,
    prompt_token_ids,
    question_from_text,
)

__all__ = ["LoraConfig", "ModelConfig", "Prompt", "PromptTooLongError", "build_prompt", "completion_text",
           "load_model", "load_tokenizer", "prompt_token_ids", "question_from_text"]
