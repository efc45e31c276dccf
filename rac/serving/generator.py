"""Batched greedy generation of clarifying questions, and the statistics of its batches.

:class:`QuestionGenerator` holds one causal LM and its tokenizer and turns a list of
prompts into questions with one left-padded greedy ``generate`` call
(:func:`rac.models.generation.greedy_generate`, on the prompt ids training used), so a
served model sees the inputs it was trained on.

:class:`GenerationScheduler` runs those calls one at a time and, whenever the model frees
up, merges everything that arrived meanwhile into the next call. Ray Serve's
``@serve.batch`` forms a batch as soon as its wait timeout passes, even while the previous
batch still runs; in a closed loop the small batches formed that way stay small and queue
behind one another. The scheduler lets ``@serve.batch`` gather arrivals (and wait for
company when the model is idle) and then coalesces its batches up to ``max_batch_size``.
Nothing here knows about Ray; ``serve/app.py`` wires it into the Serve deployment.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rac.models.generation import greedy_generate
from rac.models.prompts import prompt_token_ids, question_from_text

logger = logging.getLogger(__name__)


class QuestionGenerator:
    """One causal LM generating clarifying questions greedily, many prompts at a time.

    Parameters
    ----------
    model_path
        Hugging Face model directory with ``config.json`` and the tokenizer files.
    dtype
        Model dtype (``auto``: :data:`rac.models.factory.DTYPE_RULE`).
    device
        ``auto``, ``cpu`` or ``cuda`` (:func:`rac.models.factory.resolve_device`, with ``num_gpus``
        the GPUs the replica reserved); ``cuda`` where no GPU is visible raises ``ConfigError``.
    num_gpus
        GPUs the replica reserved.
    attn_implementation
        transformers' attention kernel.
    torch_threads
        torch intra-op threads (None: leave as the process has it).
    """

    def __init__(self, model_path: str | Path, dtype: str = "auto", device: str = "auto", num_gpus: float = 0,
                 attn_implementation: str = "sdpa", torch_threads: int | None = None):
        import torch

        from rac.models.factory import check_model_dir, load_causal_lm, load_tokenizer, resolve_device

        path = check_model_dir(model_path, "model_path", "set model_path to an exported model directory")
        self.device = resolve_device(device, num_gpus)
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self.model = load_causal_lm(path, dtype, self.device, attn_implementation)
        logger.info("generator model %s loaded (%s on %s, %d threads)", path, self.model.dtype, self.device,
                    torch.get_num_threads())

    def generate(self, prompts: list[str], max_new_tokens: list[int] | int) -> list[str]:
        """One question per prompt, from one batched greedy ``generate``
        (:func:`rac.models.generation.greedy_generate`).

        Parameters
        ----------
        prompts
            Full prompts (``rac.models.prompts.build_prompt(...).text``).
        max_new_tokens
            Token limit per prompt (or one for all).

        Returns
        -------
        The clarifying questions, in the order of ``prompts``.
        """
        return [question_from_text(t) for t in greedy_generate(self.model, self.tokenizer, self.encode(prompts),
                                                                 max_new_tokens)]

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """The prompts' token ids, as training encoded them (:func:`rac.models.prompts.prompt_token_ids`)."""
        return [prompt_token_ids(self.tokenizer, p) for p in prompts]


@dataclass
class BatchStats:
    """Counts of the batches a generator replica ran (what ``GET /v1/stats`` shows).

    Serve also exports ``serve_actual_batch_size`` and ``serve_batch_wait_time_ms`` as
    Prometheus metrics; these counts are the same facts, readable over HTTP.
    """

    requests: int = 0
    batches: int = 0
    max_batch_size_seen: int = 0
    generate_seconds: float = 0.0
    size_histogram: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, batch_size: int, seconds: float) -> None:
        with self._lock:
            self.requests += batch_size
            self.batches += 1
            self.max_batch_size_seen = max(self.max_batch_size_seen, batch_size)
            self.generate_seconds += seconds
            self.size_histogram[batch_size] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "batches": self.batches,
                    "max_batch_size_seen": self.max_batch_size_seen,
                    "mean_batch_size": self.requests / self.batches if self.batches else 0.0,
                    "generate_seconds": round(self.generate_seconds, 4),
                    "batch_sizes": {str(k): v for k, v in sorted(self.size_histogram.items())}}




class GenerationScheduler:
    """One generate call at a time, each taking up to ``max_batch_size`` of all pending prompts.

    Parameters
    ----------
    generate
        ``generate(prompts, max_new_tokens) -> questions`` (:meth:`QuestionGenerator.generate`);
        runs in ``executor``, off the event loop.
    max_batch_size
        Prompts per generate call at most.
    executor
        Where ``generate`` runs (one worker: calls never overlap anyway).
    stats
        Records the size of every generate call.
    delay_s
        Testing only: seconds to wait before every generate call.
    """

    def __init__(self, generate: Callable[[list[str], list[int]], list[str]], max_batch_size: int,
                 executor: Executor, stats: BatchStats | None = None, delay_s: float = 0.0):
        self._generate = generate
        self.max_batch_size = max_batch_size
        self._executor = executor
        self.stats = stats or BatchStats()
        self.delay_s = delay_s
        self._pending: list[tuple[str, int, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def submit(self, prompts: list[str], max_new_tokens: list[int]) -> list[str]:
        """Questions for ``prompts``, generated together with whatever else is pending."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prompts]
        self._pending.extend(zip(prompts, max_new_tokens, futures, strict=True))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            # Requests whose caller gave up (timeout, disconnect) are not generated.
            self._pending = [p for p in self._pending if not p[2].done()]
            batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size:]
            if not batch:
                break
            t0 = time.perf_counter()
            try:
                questions = await loop.run_in_executor(
                    self._executor, self._generate, [b[0] for b in batch], [b[1] for b in batch])
            except Exception as e:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.stats.record(len(batch), time.perf_counter() - t0)
            for (_, _, future), question in zip(batch, questions, strict=True):
                if not future.done():
                    future.set_result(question)
