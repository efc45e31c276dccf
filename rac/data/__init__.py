"""Data: the record schema, loaders, the passage corpus and topic splits."""

from rac.data.corpus import build_corpus, passage_id
from rac.data.loaders import DataFormatError, LoadedData, load_corpus_file, load_data
from rac.data.schema import RECORD_SCHEMA, make_record, records_to_table
from rac.data.splits import assign_splits

__all__ = [
    "RECORD_SCHEMA", "DataFormatError", "LoadedData", "assign_splits", "build_corpus",
    "load_corpus_file", "load_data", "make_record", "passage_id", "records_to_table",
]
