"""Token-level mixture decoding of unfaithful negatives (step 3 of RAC).

Eq. 3 of the method: at every step t of a clarifying question C_q,

    C_{q,t} ~ (1 - a_t) p_theta0(. | C_{q,<t}, U_q, D) + a_t p_uncond(. | C_{q,<t}, U_q),
    a_t ~ Bernoulli(alpha),

where p_theta0 is the grounded model (it reads the passages D in its prompt) and p_uncond
the ungrounded one (query U_q only). Both models continue the *same* generated tokens, each
behind its own prompt, so every step costs one incremental forward per model on its own KV
cache. ``alpha = 0`` decodes from the grounded model alone, ``alpha = 1`` from the
ungrounded one; in between, the sample drifts away from the passages token by token, which
is what makes it a plausible but unfaithful negative C-.

Reproducibility. Every row has its own seed and its own ``torch.Generator``, from which a
fixed block of uniforms is drawn up front, two per step (one for a_t, one for the token),
whatever the row's batch and whichever model supplies its tokens. Padded batched forwards still
differ from unbatched ones by float noise (~1e-6 in the logits), so the token is drawn by
inverting the CDF of the filtered distribution *in token-id order* rather than with
``torch.multinomial``: a logit perturbation of size eps moves the CDF's boundaries by about
eps, and the sample changes only when the row's uniform falls within eps of a boundary,
which in practice it does not (sorting by probability instead would swap whole intervals
between near-tied tokens).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rac.decoding.config import SamplingParams
from rac.models.generation import left_pad
from rac.models.prompts import decode_whole, prompt_token_ids

logger = logging.getLogger(__name__)

#: Provenance values: which model supplied a token.
FROM_GROUNDED = 0
FROM_UNGROUNDED = 1


def row_seed(base_seed: int, row_id: str) -> int:
    """A row's own seed, derived stably from the run's base seed and the row id.

    SHA-256 rather than ``hash()``: Python salts string hashes per process, and the seed
    must be the same on every actor and across restarts.
    """
    digest = hashlib.sha256(f"{base_seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def sample_seed(base_seed: int, k: int) -> int:
    """Base seed of the ``k``-th of several samples per row (best-of-n): ``base_seed`` itself for
    the first, so sample 0 is the one a single run with ``base_seed`` draws; a derived seed (as
    :func:`row_seed` derives one) for the others, apart from any small seed a study lists."""
    return base_seed if k == 0 else row_seed(base_seed, f"sample-{k}")


@dataclass
class MixtureSample:
    """One decoded sequence and where each of its tokens came from.

    Attributes
    ----------
    text
        The decoded question (special tokens dropped, cut after the first '?' when the row
        stopped there), stripped.
    token_ids
        The generated tokens, including the final end-of-sequence token if one was drawn.
    provenance
        Per token: 1 if the ungrounded model supplied it (a_t = 1), 0 if the grounded one did.
    mixing_rate
        Realised share of ungrounded tokens, ``mean(provenance)``.
    finish_reason
        ``"eos"``, ``"question"`` (first '?' reached) or ``"length"`` (max_new_tokens).
    seed
        The row's seed.
    """

    text: str
    token_ids: list[int]
    provenance: list[int]
    finish_reason: str
    seed: int
    mixing_rate: float = field(init=False)

    def __post_init__(self) -> None:
        self.mixing_rate = sum(self.provenance) / len(self.provenance) if self.provenance else 0.0


# ----------------------------------------------------------------------------- sampling


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p, in the order of Hugging Face's logits warpers.

    Tokens outside the kept set get ``-inf``. Ties at the k-th logit are all kept.
    """
    logits = logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0) -> torch.Tensor:
    """Draw one token per row by inverting the filtered distribution's CDF at ``uniforms``.

    Parameters
    ----------
    logits
        ``(batch, vocab)`` next-token logits.
    uniforms
        ``(batch,)`` values in [0, 1), one per row (from the row's own generator).
    temperature, top_k, top_p
        As in :class:`SamplingParams`.

    Returns
    -------
    torch.Tensor
        ``(batch,)`` token ids.

    Notes
    -----
    The CDF is accumulated in token-id order, not sorted by probability, so that float
    noise in the logits only nudges interval boundaries and does not reorder intervals.
    """
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # u * total can round up to total; fall back to the last token with any mass.
    vocab = probs.shape[-1]
    last_kept = vocab - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)
    return torch.where(tokens >= vocab, last_kept, tokens)


# ----------------------------------------------------------------------------- the decoder


class _Stream:
    """One model's side of the mixture: its KV cache, attention mask and next position."""

    def __init__(self, model: Any):
        self.model = model
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.next_position: torch.Tensor | None = None
        # Only the last position's logits are needed; models that can skip the rest save
        # a (batch, prompt_len, vocab) tensor at prefill.
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Left padding: real tokens start at position 0 in every row, as in an unpadded run.
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                         use_cache=True, **self.extra)
        self.cache, self.mask = out.past_key_values, attention_mask
        self.next_position = positions[:, -1] + 1
        return out.logits[:, -1, :].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None and self.next_position is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        out = self.model(input_ids=tokens.unsqueeze(-1), attention_mask=self.mask,
                         position_ids=self.next_position.unsqueeze(-1), past_key_values=self.cache,
                         use_cache=True, **self.extra)
        self.cache = out.past_key_values
        self.next_position = self.next_position + 1
        return out.logits[:, -1, :].float()

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished rows from the cache so later steps do not compute them."""
        assert self.mask is not None and self.next_position is not None
        self.cache.batch_select_indices(rows)
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]


class MixtureDecoder:
    """Batched mixture decoding (Eq. 3) with one KV cache per model.

    Parameters
    ----------
    grounded_model
        p_theta0, a causal LM that reads the grounded prompt (query and passages).
    ungrounded_model
        p_uncond, a causal LM that reads the ungrounded prompt (query only).
    tokenizer
        The tokenizer both models share (see
        :func:`rac.decoding.models.check_same_tokenizer`); it needs a pad token.
    params
        Sampling parameters.
    """

    def __init__(self, grounded_model: Any, ungrounded_model: Any, tokenizer: Any, params: SamplingParams):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token; load it with rac.models.load_tokenizer")
        self.grounded_model = grounded_model.eval()
        self.ungrounded_model = ungrounded_model.eval()
        self.tokenizer = tokenizer
        self.params = params
        self.device = next(grounded_model.parameters()).device
        # Padded embedding matrices may be larger than the tokenizer; only ids both models
        # can score are candidates.
        self.vocab_size = min(grounded_model.get_output_embeddings().weight.shape[0],
                              ungrounded_model.get_output_embeddings().weight.shape[0])
        self.eos_ids = self._eos_ids()
        self.ends_question = self._question_tokens()

    def _eos_ids(self) -> torch.Tensor:
        ids = {self.tokenizer.eos_token_id}
        for model in (self.grounded_model, self.ungrounded_model):
            eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            ids.update(eos if isinstance(eos, list) else [eos])
        return torch.tensor(sorted(i for i in ids if i is not None and i < self.vocab_size), device=self.device,
                            dtype=torch.long)

    def _question_tokens(self) -> torch.Tensor:
        """Boolean mask over the vocabulary: tokens whose text holds a '?'."""
        texts = self.tokenizer.batch_decode([[i] for i in range(self.vocab_size)])
        return torch.tensor(["?" in t for t in texts], dtype=torch.bool, device=self.device)

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids of the prompts, encoded as training encoded them."""
        ids = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        return left_pad(ids, self.tokenizer.pad_token_id, self.device)

    def _uniforms(self, seeds: Sequence[int]) -> torch.Tensor:
        """``(batch, max_new_tokens, 2)``: per row and step, one uniform for a_t, one for the token.

        Drawn up front from each row's own generator, always the same number per row, so a
        row's draws do not depend on its batch or on which model supplied earlier tokens.
        """
        steps = self.params.max_new_tokens
        draws = [torch.rand((steps, 2), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                 for s in seeds]
        return torch.stack(draws).to(self.device)

    @torch.inference_mode()
    def generate(self, grounded_prompts: Sequence[str], ungrounded_prompts: Sequence[str],
                 seeds: Sequence[int]) -> list[MixtureSample]:
        """Decode one mixture sample per row.

        Parameters
        ----------
        grounded_prompts
            Prompts of p_theta0 (``build_prompt(..., grounded=True)``), one per row.
        ungrounded_prompts
            Prompts of p_uncond (``build_prompt(..., grounded=False)``), same rows and order.
        seeds
            One seed per row: the same row, seed, models and parameters give the same sample
            whatever batch the row is decoded in.

        Returns
        -------
        list of MixtureSample
            In the order of the inputs.
        """
        n = len(grounded_prompts)
        if not (len(ungrounded_prompts) == len(seeds) == n):
            raise ValueError(f"got {n} grounded prompts, {len(ungrounded_prompts)} ungrounded prompts and "
                             f"{len(seeds)} seeds; give one of each per row")
        if n == 0:
            return []
        p = self.params
        uniforms = self._uniforms(seeds)
        # alpha 0 never draws from p_uncond, alpha 1 never from p_theta0 (u is in [0, 1)): the model
        # never drawn from is not run, which halves the cost of the grounded samples (best_of_n's C+)
        # and leaves every draw, so every sample, as it was.
        streams = {FROM_GROUNDED: (_Stream(self.grounded_model), grounded_prompts),
                   FROM_UNGROUNDED: (_Stream(self.ungrounded_model), ungrounded_prompts)}
        if p.alpha == 0.0:
            del streams[FROM_UNGROUNDED]
        elif p.alpha == 1.0:
            del streams[FROM_GROUNDED]
        logits = {k: stream.prefill(*self._encode(stream_prompts))[:, : self.vocab_size]
                  for k, (stream, stream_prompts) in streams.items()}

        tokens: list[list[int]] = [[] for _ in range(n)]
        provenance: list[list[int]] = [[] for _ in range(n)]
        finish = ["length"] * n
        active = torch.arange(n, device=self.device)  # original row index of each batch row
        for t in range(p.max_new_tokens):
            u = uniforms[active, t]
            from_ungrounded = u[:, 0] < p.alpha  # a_t ~ Bernoulli(alpha)
            mixed = (torch.where(from_ungrounded.unsqueeze(-1), logits[FROM_UNGROUNDED], logits[FROM_GROUNDED])
                     if len(logits) == 2 else next(iter(logits.values())))
            if p.do_sample:
                next_tokens = sample_from_logits(mixed, u[:, 1], p.temperature, p.top_k, p.top_p)
            else:
                next_tokens = mixed.argmax(dim=-1)
            is_eos = torch.isin(next_tokens, self.eos_ids) if not p.ignore_eos else torch.zeros_like(from_ungrounded)
            ends_question = self.ends_question[next_tokens] if p.stop_at_question else torch.zeros_like(is_eos)
            done = is_eos | ends_question
            for row, tok, a, eos, q in zip(active.tolist(), next_tokens.tolist(), from_ungrounded.tolist(),
                                           is_eos.tolist(), ends_question.tolist(), strict=True):
                tokens[row].append(tok)
                provenance[row].append(int(a))
                if eos or q:
                    finish[row] = "eos" if eos else "question"
            if t + 1 == p.max_new_tokens or bool(done.all()):
                break
            if done.any():
                keep = (~done).nonzero().squeeze(-1)
                active, next_tokens = active[keep], next_tokens[keep]
                for stream, _ in streams.values():
                    stream.keep_rows(keep)
            # Both models read the same token, whichever supplied it.
            logits = {k: stream.step(next_tokens)[:, : self.vocab_size] for k, (stream, _) in streams.items()}

        return [MixtureSample(text=self._text(tokens[i], finish[i]), token_ids=tokens[i], provenance=provenance[i],
                              finish_reason=finish[i], seed=int(seeds[i])) for i in range(n)]

    def _text(self, token_ids: list[int], finish_reason: str) -> str:
        text = decode_whole(self.tokenizer, token_ids)
        if finish_reason == "question" and "?" in text:
            text = text[: text.index("?") + 1]
        return text.strip()
