"""The training forward: the LM head on labelled tokens only, and one prompt per pair.

TRL patches a model's forward with a fused LM head (``fused_lm_head=True`` returns
per-token log-probs, never the ``(batch, seq, vocab)`` logits). Off CUDA it projects
every position, prompt included, through the head; and DPO runs each pair's prompt
twice, once before the chosen and once before the rejected question. Our prompts (query
and passages) are most of a row, so :func:`install_training_forward` wraps TRL's forward:

- **labelled tokens only**: the hidden states of the positions that have a label go
  through TRL's chunked log-prob kernel (what TRL does on CUDA);
- **shared prompts** (``share_prompt``): a DPO batch is ``[chosen; rejected]`` with row
  ``i`` and row ``B + i`` sharing a prompt. The prompt runs once, its key/value cache is
  repeated for both questions, and the questions run on top of it. The log-probs equal
  the two full forwards' up to float rounding (the prompt's gradient collects both
  questions' terms, as it does when the prompt runs twice).

The result has TRL's layout (``FusedCausalLMOutput``, per-token fields aligned with
``labels[:, 1:]``, zero on unlabelled positions), so TRL's losses and metrics read it
unchanged. A batch that does not have the shape (prompts differ, extra model inputs,
gradient checkpointing, pre-shifted labels) takes TRL's forward as is.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from trl.kernels import ChunkedLogProbFunction
from trl.kernels.chunked_logprob import OPTIONAL_OUTPUTS
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

from rac.training.data import IGNORE_INDEX

#: Vocabulary columns per tile of the log-prob kernel (TRL's own default).
VOCAB_CHUNK = 32768


#: Text-config fields that scale or cap the logits: a model with any of them keeps TRL's forward.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")


def install_training_forward(model: Any, share_prompt: bool) -> None:
    """Wrap ``model``'s fused forward (installed by TRL's trainer) as described above.

    Wraps once; a later call only sets ``share_prompt``.
    """
    model._rac_share_prompt = share_prompt
    if getattr(model, "_rac_training_forward", False):
        return
    fused_forward = model.forward
    text_config = model.config.get_text_config()
    plain_logits = all(getattr(text_config, name, None) is None for name in LOGIT_TRANSFORMS)

    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        checkpointing = self.training and getattr(self.get_decoder(), "gradient_checkpointing", False)
        if (not fused_lm_head or args or labels is None or not plain_logits or checkpointing
                or set(kwargs) - {"input_ids", "attention_mask", "use_cache"}):
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        input_ids, attention_mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        shared = _prompt_pairs(input_ids, attention_mask, labels) if self._rac_share_prompt else None
        if shared is not None:
            hidden, targets = _shared_prompt_hidden(self, input_ids, attention_mask, labels, shared)
        else:
            states = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden, targets = states.last_hidden_state[:, :-1], labels[:, 1:]
        return _log_prob_output(self, hidden, targets, labels[:, 1:] != IGNORE_INDEX)

    model.forward = types.MethodType(forward, model)
    model._rac_training_forward = True


def _prompt_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Prompt lengths of a ``[chosen; rejected]`` batch whose pairs share their prompt, else None.

    Rows must be flush left (``[prompt][question][padding]``), every row labelled, and
    row ``i`` and row ``B + i`` hold the same prompt tokens.
    """
    rows, width = input_ids.shape
    if rows % 2 or rows == 0:
        return None
    labelled = labels != -100
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(width, device=input_ids.device)
    if not labelled.any(dim=1).all() or not torch.equal(attention_mask.bool(), positions < lengths[:, None]):
        return None
    prompt_len = labelled.int().argmax(dim=1)
    if int(prompt_len.min()) < 1:
        return None
    half = rows // 2
    in_prompt = positions < prompt_len[:half, None]
    if not torch.equal(prompt_len[:half], prompt_len[half:]) or not torch.equal(
            input_ids[:half] * in_prompt, input_ids[half:] * in_prompt):
        return None
    # The question is every attended token after the prompt, all of it labelled.
    question = (positions >= prompt_len[:, None]) & attention_mask.bool()
    if not torch.equal(question, labelled):
        return None
    return prompt_len


def _shared_prompt_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                          prompt_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states predicting each question token, and those tokens, for a shared-prompt batch.

    Returns ``(hidden, targets)`` of shapes ``(2B, Q, H)`` and ``(2B, Q)``, where ``Q`` is the
    longest question; rows are in the batch's order and targets are -100 past a question's end.
    """
    rows = input_ids.size(0)
    half = rows // 2
    device = input_ids.device
    decoder = model.get_decoder()
    # The prompts, right-padded to the longest (pads are masked out of every later attention).
    width = int(prompt_len.max())
    cols = torch.arange(width, device=device)
    prompt_mask = (cols < prompt_len[:half, None]).long()
    prompt = decoder(input_ids=input_ids[:half, :width], attention_mask=prompt_mask,
                     position_ids=cols.expand(half, -1), use_cache=True)
    cache = prompt.past_key_values
    # Interleave [c0, r0, c1, r1, ...] to match the cache repeated in place.
    order = torch.arange(rows, device=device).view(2, half).t().reshape(-1)
    cache.batch_repeat_interleave(2)
    question_len = attention_mask.sum(dim=1) - prompt_len
    span = int(question_len.max())
    steps = torch.arange(span, device=device)
    source = (prompt_len[:, None] + steps).clamp(max=input_ids.size(1) - 1)
    in_question = steps < question_len[:, None]
    question_ids = input_ids.gather(1, source)[order]
    targets = labels.gather(1, source).masked_fill(~in_question, -100)
    questions = decoder(input_ids=question_ids, attention_mask=torch.cat(
        (prompt_mask.repeat_interleave(2, dim=0), in_question[order].long()), dim=1),
        position_ids=(prompt_len[:, None] + steps)[order], past_key_values=cache, use_cache=True)
    restore = torch.argsort(order)
    question_hidden = questions.last_hidden_state[restore]
    # The prompt's last state predicts a question's first token; each question token the next.
    last = prompt.last_hidden_state.gather(1, (prompt_len[:half] - 1).view(-1, 1, 1).expand(
        -1, 1, prompt.last_hidden_state.size(-1))).repeat(2, 1, 1)
    return torch.cat((last, question_hidden[:, :-1]), dim=1), targets


def _log_prob_output(model: Any, hidden: torch.Tensor, targets: torch.Tensor, label_mask: torch.Tensor) -> Any:
    """TRL's fused output, from the hidden states of the labelled positions only."""
    lm_head = model.get_output_embeddings()
    mask = targets != -100
    hidden = hidden.to(lm_head.weight.device)
    weight, bias = lm_head.weight, lm_head.bias
    with maybe_gather_lm_head_ctx(weight, bias):
        per_token = ChunkedLogProbFunction.apply(hidden[mask], weight, bias, targets[mask], 1.0, VOCAB_CHUNK, None,
                                                 1.0, ("log_probs", *OPTIONAL_OUTPUTS))
    # In row-major order, the labelled positions of `targets` and of `label_mask` are the same tokens.
    fields = [None if x is None else torch.zeros(label_mask.shape, dtype=x.dtype, device=x.device).masked_scatter(
        label_mask, x) for x in per_token]
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = fields
    loss = -log_probs.sum() / label_mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq_probs,
                               mean_logits=mean_logits, is_top1=is_top1, label_mask=label_mask)
