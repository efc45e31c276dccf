"""Unfaithful negatives C- by token-level mixture decoding (Eq. 3), and its Ray Data stage."""

from rac.decoding.config import NegativesConfig, SamplingParams
from rac.decoding.mixture import (
    FROM_GROUNDED,
    FROM_UNGROUNDED,
    MixtureDecoder,
    MixtureSample,
    filter_logits,
    row_seed,
    sample_from_logits,
)
from rac.decoding.models import TokenizerMismatchError, check_same_tokenizer, model_revision
from rac.decoding.stage import (
    NEGATIVES_SCHEMA,
    NegativesBatch,
    negatives_dataset,
    read_negatives,
    run_generate_negatives,
)

__all__ = [
    "FROM_GROUNDED", "FROM_UNGROUNDED", "NEGATIVES_SCHEMA", "MixtureDecoder", "MixtureSample", "NegativesBatch",
    "NegativesConfig", "SamplingParams", "TokenizerMismatchError", "check_same_tokenizer", "filter_logits",
    "model_revision", "negatives_dataset", "read_negatives", "row_seed", "run_generate_negatives",
    "sample_from_logits",
]
