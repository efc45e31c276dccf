"""Request and response bodies of the HTTP API (pydantic; FastAPI derives the OpenAPI schema).

The request model is built from the configured limits (:func:`make_request_model`), so the
schema a client reads states the bounds the server enforces. It is strict: a number where
a string belongs (or ``"5"`` where an integer belongs) is a 422, not silently converted,
and unknown fields are refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic_core import PydanticCustomError

from rac.serving.config import ServeConfig


class Passage(BaseModel):
    """One retrieved passage of D, best first."""

    id: str = Field(description="Stable passage id (p + 16 hex digits of the SHA-1 of its text, or the corpus id).")
    text: str = Field(description="Passage text.")
    score: float = Field(description="BM25 score (Elasticsearch scale).")


class Grounding(BaseModel):
    """Data-grounding (PARENT-style) of the question against its passages, each in [0, 1]."""

    precision: float
    recall: float
    f1: float


class UnsupportedSpan(BaseModel):
    """Words of the question the detector finds unsupported by the passages."""

    start: int = Field(description="Offset of the span's first character in the question (Unicode code points).")
    end: int = Field(description="Offset one past the span's last character.")
    text: str = Field(description="question[start:end].")
    probability: float = Field(description="The largest P(unsupported) among the span's tokens.")


class ClarifyResponse(BaseModel):
    """One clarifying question, grounded in the passages retrieved for the query, or (status
    no_passages) the statement that no passage matched, without a question."""

    status: Literal["answered", "no_passages"] = Field(
        description="answered: question holds a clarifying question grounded in passages. no_passages: retrieval "
                    "found no passage for the query, so no question was generated (question null, passages "
                    "empty); rephrase the query or search another index.")
    question: str | None = Field(description="The clarifying question; null when status is no_passages.")
    passages: list[Passage] = Field(
        description="Passages D the question was generated from, best first; empty when status is no_passages.")
    model: str = Field(description="Name of the served model.")
    grounding: Grounding | None = Field(
        description="Grounding of the question in the passages; null when the scorer is not installed or no "
                    "question was generated.")
    unsupported_spans: list[UnsupportedSpan] | None = Field(
        description="Content words of the question that the unsupported-span detector finds unsupported by the "
                    "passages (P(unsupported) at or above its threshold), as character offsets; null when no "
                    "detector is configured or no question was generated.")
    detector_support: float | None = Field(
        description="1 - mean P(unsupported) over the question's content words, in [0, 1]; null when no detector "
                    "is configured or no question was generated.")
    latency_ms: float = Field(description="Time the server spent on the request, in milliseconds.")


class ErrorResponse(BaseModel):
    """Every error: a stable code, a message for people, and the fields at fault (422)."""

    error: str = Field(description="Machine-readable error code, e.g. invalid_request, unauthorized.")
    message: str = Field(description="What went wrong and what to change.")
    fields: list[dict[str, str]] | None = Field(
        default=None, description="Per invalid field: {field, message} (422 only).")


class _ClarifyRequestBase(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @field_validator("query", check_fields=False)
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            # A custom error type keeps pydantic's "Value error, " prefix out of the message.
            raise PydanticCustomError("blank", "query is blank (whitespace only)")
        return value


def make_request_model(cfg: ServeConfig) -> type[BaseModel]:
    """``ClarifyRequest`` with the limits of ``cfg`` (query length, top_k, max_new_tokens)."""
    return create_model(
        "ClarifyRequest",
        __base__=_ClarifyRequestBase,
        __doc__="A user's search query to ask a clarifying question about.",
        query=(Annotated[str, Field(min_length=1, max_length=cfg.retriever.max_query_chars,
                                    description="The user's search query U_q.", examples=["jaguar"])], ...),
        top_k=(Annotated[int, Field(ge=1, le=cfg.limits.max_top_k)] | None,
               Field(None, description=f"Passages to retrieve (default {cfg.retriever.top_k}).")),
        max_new_tokens=(Annotated[int, Field(ge=1, le=cfg.limits.max_new_tokens)] | None, Field(
            None, description=f"Tokens to generate at most (default {cfg.generator.max_new_tokens}).")),
    )
