"""What one clarify request does, independent of HTTP and Ray: U_q -> D -> prompt -> question.

:class:`ClarifyService` retrieves passages D for the query U_q through the configured
backend, builds the grounded prompt (``rac.models.prompts``), asks a generator for the
clarifying question, and scores the question's grounding in D. Every failure it can
foresee becomes a :class:`ServingError` with an HTTP status and a message safe to show a
client; details (server names, tracebacks) go to the log only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rac.evaluation.scorers import NOT_CONFIGURED
from rac.models.prompts import PromptTooLongError, build_prompt
from rac.retrieval.base import RetrievalError, Retriever, query_error
from rac.serving.admission import GenerationQueue, Overloaded
from rac.serving.config import ServeConfig

logger = logging.getLogger(__name__)

#: What /readyz shows for an optional component that is not configured (it does not make the app unready).

#: ``status`` of an answer with a clarifying question, and of one where retrieval found no passage
#: (no question is generated: one without passages would not be grounded in any).
ANSWERED, NO_PASSAGES = "answered", "no_passages"
#: The detector's fields of an answer it did not score.
_NOT_DETECTED = {"unsupported_spans": None, "detector_support": None}

#: ``async generate(prompt, max_new_tokens) -> question``: the generator deployment, or a stand-in.
GenerateFn = Callable[[str, int], Awaitable[str]]


class ServingError(Exception):
    """A request that cannot be answered; ``message`` is what the client sees.

    Parameters
    ----------
    status
        HTTP status code.
    message
        Client-facing text: says what failed, never how (no hosts, no traceback).
    field
        The request field at fault (422 only).
    retry_after_s
        Seconds after which a retry may succeed (503 only).
    """

    def __init__(self, status: int, message: str, field: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


def _grounding_fn() -> Callable[[str, list[str]], dict[str, float]] | None:
    """``rac.evaluation.grounding.parent_grounding`` if that module is installed, else None."""
    try:
        from rac.evaluation.grounding import parent_grounding
    except ImportError:
        return None
    return parent_grounding


class ClarifyService:
    """Retrieval, prompt, generation and grounding score for one query at a time.

    Parameters
    ----------
    cfg
        The application config (retriever, limits, timeouts, prompt budget).
    retriever
        A BM25 backend (``rac.retrieval.make_retriever(cfg.retriever)``).
    tokenizer
        The served model's tokenizer; counts prompt tokens.
    generate
        ``async generate(prompt, max_new_tokens) -> question``.
    detector
        The unsupported-span detector (:class:`rac.detector.UnsupportedSpanDetector`), or None.
    """

    def __init__(self, cfg: ServeConfig, retriever: Retriever, tokenizer: Any, generate: GenerateFn,
                 detector: Any = None):
        self.cfg = cfg
        self.retriever = retriever
        self.tokenizer = tokenizer
        self._generate = generate
        self.queue = GenerationQueue(
            cfg.generator.max_batch_size, cfg.generator.deployment.autoscaling.max_replicas,
            cfg.ingress.generation_timeout_s, cfg.ingress.generation_time_smoothing, shed=cfg.ingress.shed_load)
        # Searches run in threads of their own: a hung backend can hold at most these,
        # and the event loop (health checks, other requests) never waits on a socket.
        self._pool = ThreadPoolExecutor(max_workers=cfg.ingress.retrieval_threads, thread_name_prefix="retrieval")
        self.detector = detector
        # One thread of its own: a detector call never waits behind a hung search.
        self._detector_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector") if detector else None
        self.detector_threshold = (cfg.detector.threshold if cfg.detector.threshold is not None
                                   else float(getattr(detector, "info", {}).get("threshold", 0.5)))
        self._grounding = _grounding_fn()
        if self._grounding is None:
            logger.warning("rac.evaluation.grounding is not installed: responses carry grounding=null")

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def retrieve(self, query: str, top_k: int) -> list[dict[str, Any]]:
        """Top-``top_k`` passages for ``query``, best first, within ``ingress.retrieval_timeout_s``."""
        timeout = self.cfg.ingress.retrieval_timeout_s
        try:
            (result,) = await asyncio.wait_for(self._in_pool(self.retriever.search, [query], top_k), timeout)
        except TimeoutError:
            logger.warning("retrieval did not answer within %.1fs", timeout)
            raise ServingError(504, f"the retrieval backend did not answer within {timeout:g}s") from None
        except RetrievalError as e:
            logger.error("retrieval failed: %s", e)
            raise ServingError(503, "the retrieval backend is unavailable; retry later", retry_after_s=5) from None
        if isinstance(result, str):
            # A per-query failure the backend reported (the query itself was checked before).
            logger.error("retrieval failed for one query: %s", result)
            raise ServingError(502, "the retrieval backend could not run this search")
        return [{"id": str(h["id"]), "text": str(h["text"]), "score": float(h["score"])} for h in result]

    def prompt(self, query: str, passages: list[dict[str, Any]]) -> str:
        """The grounded prompt, passages trimmed to ``generator.max_prompt_tokens``."""
        try:
            return build_prompt(self.tokenizer, query, passages, grounded=True,
                                max_tokens=self.cfg.generator.max_prompt_tokens).text
        except PromptTooLongError:
            raise ServingError(422, f"query is too long for the prompt budget of "
                                    f"{self.cfg.generator.max_prompt_tokens} tokens", field="query") from None

    async def generate(self, prompt: str, max_new_tokens: int) -> str:
        """The question for ``prompt`` within ``ingress.generation_timeout_s``; refused at once
        (503, Retry-After) when the queue is not expected to finish it in that time."""
        timeout = self.cfg.ingress.generation_timeout_s
        try:
            with self.queue.admit():
                return await asyncio.wait_for(self._generate(prompt, max_new_tokens), timeout)
        except Overloaded as e:
            logger.info("shed a request: generation %s (%d in flight)", e, self.queue.in_flight)
            raise ServingError(503, f"the generator is overloaded: this request would wait about "
                                    f"{e.expected_s:.0f}s, more than the {timeout:g}s limit; retry later",
                               retry_after_s=e.retry_after_s) from None
        except TimeoutError:
            logger.warning("generation did not finish within %.1fs", timeout)
            raise ServingError(504, f"the generator did not answer within {timeout:g}s") from None

    async def grounding(self, question: str, passages: list[dict[str, Any]]) -> dict[str, float] | None:
        """PARENT-style grounding of ``question`` in the passage texts (None if unavailable)."""
        if self._grounding is None:
            return None
        try:
            scores = await self._in_pool(self._grounding, question, [p["text"] for p in passages])
        except Exception:
            # A scoring bug must not cost the user their question; the log keeps the trace.
            logger.exception("grounding score failed")
            return None
        return {k: float(v) for k, v in scores.items()}

    async def unsupported_spans(self, question: str, passages: list[dict[str, Any]]) -> dict[str, Any]:
        """``{unsupported_spans, detector_support}`` of ``question``; both None without a detector."""
        if self.detector is None:
            return dict(_NOT_DETECTED)
        loop = asyncio.get_running_loop()
        try:
            (result,) = await loop.run_in_executor(self._detector_pool, self.detector.score, [question], [passages])
        except Exception:
            # As with grounding: a scoring failure must not cost the user their question.
            logger.exception("detector failed")
            return dict(_NOT_DETECTED)
        return {"unsupported_spans": result.spans(self.detector_threshold),
                "detector_support": round(float(result.support), 4)}

    async def clarify(self, query: str, top_k: int | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
        """The clarifying question for ``query`` with its passages, grounding and latency; when
        retrieval finds no passage, status ``no_passages`` and no question.

        Raises
        ------
        ServingError
            422 for a query that cannot be searched, 502/503/504 when a backend fails or is slow,
            503 at once when the generator's queue would not answer within the timeout.
        """
        t0 = time.perf_counter()
        error = query_error(query, self.cfg.retriever.max_query_chars)
        if error:
            raise ServingError(422, error, field="query")
        top_k = top_k or self.cfg.retriever.top_k
        max_new_tokens = max_new_tokens or self.cfg.generator.max_new_tokens
        passages = await self.retrieve(query, top_k)
        if not passages:
            # A question from the prompt without passages would be ungrounded, yet look like a grounded one.
            return self._answer(NO_PASSAGES, None, [], None, dict(_NOT_DETECTED), t0)
        prompt = await self._in_pool(self.prompt, query, passages)
        question = await self.generate(prompt, max_new_tokens)
        grounding, detected = await asyncio.gather(self.grounding(question, passages),
                                                   self.unsupported_spans(question, passages))
        return self._answer(ANSWERED, question, passages, grounding, detected, t0)

    def _answer(self, status: str, question: str | None, passages: list[dict[str, Any]],
                grounding: dict[str, float] | None, detected: dict[str, Any], t0: float) -> dict[str, Any]:
        """The body of ``POST /v1/clarify`` (:class:`rac.serving.schemas.ClarifyResponse`)."""
        return {"status": status, "question": question, "passages": passages, "model": self.cfg.served_model_name,
                "grounding": grounding, **detected, "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}

    async def ready(self, check_generator: Callable[[], Awaitable[Any]] | None = None) -> dict[str, str]:
        """Per component, "ok" or what is wrong; the caller answers 503 unless all are ok."""
        check = getattr(self.retriever, "check_ready", None)
        status = {"retriever": await self._probe("retriever", lambda: self._in_pool(check)) if check else "ok"}
        if check_generator is not None:
            status["generator"] = await self._probe("generator", check_generator)
        status["detector"] = "ok" if self.detector is not None else NOT_CONFIGURED
        return status

    async def _probe(self, name: str, check: Callable[[], Awaitable[Any]]) -> str:
        """"ok", or what is wrong with one component, within the readiness timeout."""
        timeout = self.cfg.ingress.readiness_timeout_s
        try:
            await asyncio.wait_for(check(), timeout)
            return "ok"
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except Exception as e:
            logger.warning("readiness: %s not ready: %s", name, e)
            return "unavailable"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._detector_pool is not None:
            self._detector_pool.shutdown(wait=False, cancel_futures=True)
        self.retriever.close()
