"""Canonical schemas and the table registry: every lake table's name, schema, key and partitioning.

Schemas are written as ``(column, type)`` pairs in Spark's simple type syntax so they read like a
table contract; :func:`arrow_schema` turns them into Arrow types and :func:`spark_schema` derives
the Spark ones from those. The lake layer enforces them on write (columns selected in order and
cast), so every table has exactly the schema declared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

# ----------------------------------------------------------------------------- canonical entities
# Every source adapter maps its input onto these columns (see mmpipeline.sources).
PRODUCT_COLUMNS = [
    ("product_id", "string"),
    ("title", "string"),
    ("description", "string"),
    ("brand", "string"),
    ("category_path", "string"),  # "Apparel > Topwear > Shirts"
    ("attributes", "map<string,string>"),
    ("price", "string"),  # raw in bronze; double in silver
    ("currency", "string"),
    ("image_ref", "string"),  # path relative to the source's image_root (or absolute under it)
    ("popularity", "string"),
    ("rating", "string"),
    ("updated_at", "string"),
]
QUERY_COLUMNS = [
    ("query", "string"),
    ("query_id", "string"),  # optional in sources; derived from the normalised text when absent
    ("audio_ref", "string"),  # voice queries: audio file path
    ("frequency", "string"),
]
JUDGMENT_COLUMNS = [
    ("query", "string"),
    ("product_id", "string"),
    ("grade", "string"),
]
INTERACTION_COLUMNS = [
    ("query", "string"),
    ("product_id", "string"),
    ("event_type", "string"),  # impression | click | add_to_cart | purchase
    ("event_ts", "string"),
    ("session_id", "string"),
]
ENTITY_COLUMNS = {
    "products": PRODUCT_COLUMNS,
    "queries": QUERY_COLUMNS,
    "judgments": JUDGMENT_COLUMNS,
    "interactions": INTERACTION_COLUMNS,
    "voice_queries": QUERY_COLUMNS,
}

# ingest metadata carried by every bronze row
BRONZE_META = [
    ("run_date", "date"),
    ("_batch_id", "string"),
    ("_source_file", "string"),
    ("_ingested_at", "timestamp"),
    ("_row_id", "long"),  # position of the row in its batch (stable tie-break for de-duplication)
    ("_raw", "string"),  # the source row as JSON, as received
    ("_corrupt_record", "string"),  # set when the reader could not parse the line
]


@dataclass(frozen=True)
class TableSpec:
    name: str  # "layer.table"
    columns: list[tuple[str, str]]
    keys: list[str] = field(default_factory=list)  # merge / uniqueness key
    partition_by: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]


TABLES: dict[str, TableSpec] = {}


def register(spec: TableSpec) -> TableSpec:
    TABLES[spec.name] = spec
    return spec


def table(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}") from None


QUARANTINE_COLUMNS = [
    ("run_date", "date"),
    ("reason", "string"),  # machine-readable reason code, e.g. missing_id, negative_price
    ("detail", "string"),  # human-readable explanation
    ("record_key", "string"),  # the row's id where it has one
    ("record", "string"),  # the offending row as JSON
    ("_source_file", "string"),
    ("_batch_id", "string"),
]

# ---------------------------------------------------------------------------------------- bronze
for _entity, _cols in ENTITY_COLUMNS.items():
    register(TableSpec(f"bronze.{_entity}", _cols + BRONZE_META, partition_by=["run_date"],
                       description=f"{_entity} as received, mapped onto canonical column names, all strings"))
    register(TableSpec(f"quarantine.{_entity}", QUARANTINE_COLUMNS, partition_by=["run_date"],
                       description=f"{_entity} rows that could not be kept, with a reason"))

register(TableSpec("quarantine.images", [
    ("run_date", "date"), ("product_id", "string"), ("image_ref", "string"), ("reason", "string"),
    ("detail", "string"),
], partition_by=["run_date"], description="image references that failed checks; the product is kept text-only"))

# ---------------------------------------------------------------------------------------- silver
register(TableSpec("silver.products", [
    ("product_id", "string"), ("title", "string"), ("description", "string"), ("brand", "string"),
    ("category_path", "string"), ("attributes", "map<string,string>"), ("price", "double"),
    ("currency", "string"), ("image_ref", "string"), ("image_path", "string"),
    ("image_status", "string"),  # ok | none | missing | unreadable | corrupt | too_large | bomb | outside_root
    ("image_width", "int"), ("image_height", "int"), ("popularity", "double"), ("rating", "double"),
    ("updated_at", "timestamp"), ("text_hash", "string"), ("image_hash", "string"),
    ("run_date", "date"), ("_batch_id", "string"),
], keys=["product_id"], description="typed, normalised, de-duplicated catalog (one row per product)"))

register(TableSpec("silver.queries", [
    ("query_id", "string"), ("query", "string"), ("query_norm", "string"), ("audio_ref", "string"),
    ("frequency", "long"), ("text_hash", "string"), ("run_date", "date"),
], keys=["query_id"], description="distinct normalised queries"))

register(TableSpec("silver.voice_queries", [
    ("query_id", "string"), ("query", "string"), ("query_norm", "string"), ("audio_ref", "string"),
    ("frequency", "long"), ("text_hash", "string"), ("run_date", "date"),
    # the clip, as checked by the clean stage (mmpipeline.voice.clean)
    ("audio_path", "string"), ("audio_hash", "string"), ("audio_format", "string"), ("sample_rate", "int"),
    ("channels", "int"), ("duration_s", "double"),
], keys=["query_id"], description="voice queries whose clip passed the checks: audio file, content hash, "
                                   "format, and the reference transcript when the source has one"))

register(TableSpec("silver.judgments", [
    ("query_id", "string"), ("query_norm", "string"), ("product_id", "string"), ("grade", "double"),
    ("source", "string"), ("run_date", "date"),
], keys=["query_id", "product_id"], description="graded (query, product) relevance judgments"))

register(TableSpec("silver.interactions", [
    ("query_id", "string"), ("query_norm", "string"), ("product_id", "string"), ("event_type", "string"),
    ("event_ts", "timestamp"), ("session_id", "string"), ("run_date", "date"),
], keys=["session_id", "query_id", "product_id", "event_type", "event_ts"], partition_by=["run_date"],
    description="search interaction events"))

# ------------------------------------------------------------------------------------------- ops
register(TableSpec("ops.row_accounting", [
    ("run_date", "date"), ("stage", "string"), ("table_name", "string"), ("rows_in", "long"),
    ("rows_kept", "long"), ("rows_quarantined", "long"), ("balanced", "boolean"),
    ("recorded_at", "timestamp"),
], keys=["run_date", "stage", "table_name"], partition_by=["run_date"],
    description="rows in = rows kept + rows quarantined, per stage and table"))

register(TableSpec("ops.validation", [
    ("run_date", "date"), ("table_name", "string"), ("suite", "string"), ("check_name", "string"),
    ("expectation", "string"), ("column_name", "string"), ("severity", "string"), ("success", "boolean"),
    ("observed_value", "string"), ("details", "string"), ("validated_at", "timestamp"),
], keys=["run_date", "table_name", "check_name"], partition_by=["run_date"],
    description="Great Expectations results per run (one row per check; see mmpipeline.validate)"))

register(TableSpec("ops.image_checks", [
    ("image_ref", "string"), ("image_path", "string"), ("image_size", "long"), ("image_mtime_ns", "long"),
    ("image_status", "string"), ("image_detail", "string"), ("image_width", "int"), ("image_height", "int"),
    ("image_hash", "string"),
], keys=["image_ref"], description="last image check per reference: unchanged files keep their verdict"))

register(TableSpec("ops.stage_runs", [
    ("run_date", "date"), ("stage", "string"), ("status", "string"), ("started_at", "timestamp"),
    ("finished_at", "timestamp"), ("seconds", "double"), ("summary", "string"),
], keys=["run_date", "stage"], partition_by=["run_date"], description="one row per stage run (latest attempt)"))

# ------------------------------------------------------------------------------------------ gold
# one row per (entity, modality, model); the embed stage merges only new or changed content
register(TableSpec("gold.product_embeddings", [
    ("product_id", "string"), ("modality", "string"),  # text | image
    ("model_name", "string"), ("model_version", "string"), ("content_hash", "string"), ("dim", "int"),
    ("vector", "array<float>"), ("run_date", "date"), ("embedded_at", "timestamp"),
], keys=["product_id", "modality", "model_name"], description="product vectors per modality and model"))

register(TableSpec("gold.query_embeddings", [
    ("query_id", "string"), ("modality", "string"),  # text | voice
    ("model_name", "string"), ("model_version", "string"), ("content_hash", "string"), ("dim", "int"),
    ("vector", "array<float>"), ("run_date", "date"), ("embedded_at", "timestamp"),
], keys=["query_id", "modality", "model_name"], description="query vectors per modality and model"))

# ---- embed stage tables (owned by mmpipeline.embed) ----
register(TableSpec("quarantine.embed_failures", [
    ("entity", "string"),  # product | query
    ("entity_id", "string"), ("modality", "string"), ("model_name", "string"), ("model_version", "string"),
    ("content_hash", "string"),  # the content that failed; not retried until it or the model changes
    ("reason", "string"),  # decode_failed | empty_text
    ("detail", "string"), ("run_date", "date"), ("recorded_at", "timestamp"),
], keys=["entity", "entity_id", "modality", "model_name"],
    description="inputs the embed stage skipped (latest failure per entity, modality and model), with a reason"))

# ---- rank stage tables (owned by mmpipeline.rank) ----
register(TableSpec("gold.training_data", [
    ("run_date", "date"), ("query_id", "string"), ("query_norm", "string"), ("product_id", "string"),
    ("grade", "double"),  # the judged / interaction grade; null for sampled negatives
    ("label", "double"),  # grade normalised to [0, 1]; sampled negatives 0
    ("source", "string"),  # judgment | interaction | random_negative | hard_negative
    ("split", "string"),  # train | valid | test (by query, deterministic hash)
    ("cos_text", "float"), ("cos_image", "float"), ("bm25", "float"), ("bm25_rel", "float"),
    ("title_coverage", "float"), ("query_tokens", "float"), ("title_tokens", "float"),
    ("log_price", "float"), ("log_popularity", "float"), ("rating", "float"),
    ("has_query_vec", "float"), ("has_text", "float"), ("has_image", "float"), ("has_price", "float"),
    ("has_popularity", "float"), ("has_rating", "float"),
    ("text_model", "string"), ("image_model", "string"),
], keys=["run_date", "query_id", "product_id"], partition_by=["run_date"],
    description="ranker training pairs: label, split and scalar features; the query/product vectors are "
                "joined from the gold embedding tables at the versions recorded in the commit metadata"))

register(TableSpec("ops.rank_evaluations", [
    ("run_date", "date"), ("model_name", "string"), ("model_version", "string"),
    ("system", "string"),  # challenger | champion | bm25 | text_cosine | image_cosine
    ("slice", "string"),  # all | short_queries | long_queries | no_image_products
    ("metric", "string"), ("value", "double"), ("queries", "long"), ("mlflow_run_id", "string"),
    ("evaluated_at", "timestamp"),
], keys=["run_date", "model_name", "model_version", "system", "slice", "metric"], partition_by=["run_date"],
    description="held-out whole-catalog ranking metrics per system and slice, per evaluation run"))

register(TableSpec("ops.rank_decisions", [
    ("run_date", "date"), ("model_name", "string"), ("challenger_version", "string"),
    ("champion_version", "string"), ("promoted", "boolean"), ("primary_metric", "string"),
    ("challenger_value", "double"), ("champion_value", "double"), ("reasons", "string"),
    ("mlflow_run_id", "string"), ("decided_at", "timestamp"),
], keys=["run_date", "model_name", "challenger_version"], partition_by=["run_date"],
    description="champion gating decisions with their reasons"))


# ---- voice tables (owned by mmpipeline.voice) ----
register(TableSpec("gold.voice_transcripts", [
    ("query_id", "string"), ("audio_hash", "string"),
    ("asr_model", "string"), ("asr_version", "string"),  # model fingerprint / + decoding settings and prompt
    ("raw_text", "string"), ("text_norm", "string"), ("avg_logprob", "double"), ("no_speech_prob", "double"),
    ("correction", "string"),  # none | query | words (see mmpipeline.voice.vocab)
    ("query_text", "string"),  # the text the score stage searches with (corrected, normalised)
    ("usable", "boolean"),  # false: empty or no-speech transcript, not searched
    ("duration_s", "double"), ("run_date", "date"), ("transcribed_at", "timestamp"),
], keys=["query_id"], description="one recognised transcript per voice query; re-transcribed only when the "
                                  "audio hash or the recogniser version changes"))

register(TableSpec("gold.voice_features", [
    ("query_id", "string"), ("audio_hash", "string"), ("feature_version", "string"), ("dim", "int"),
    ("vector", "array<float>"), ("duration_s", "double"), ("run_date", "date"), ("computed_at", "timestamp"),
], keys=["query_id"], description="per-clip MFCC summary (mean and std per coefficient), 16 kHz, normalised"))

# ---- score stage tables (owned by mmpipeline.score) ----
_RANKING_COLUMNS = [
    ("run_date", "date"), ("query_id", "string"), ("query", "string"), ("rank", "int"),
    ("product_id", "string"), ("score", "double"), ("model_name", "string"), ("model_version", "string"),
    ("candidate_source", "string"),  # retrieval sources that proposed the product, e.g. "bm25+text"
    ("modality", "string"),  # text | voice (voice: query_id is the voice query, query its transcript)
]
register(TableSpec("gold.search_ranking", _RANKING_COLUMNS, keys=["run_date", "query_id", "rank"],
                   partition_by=["run_date"],
                   description="per run date and query: the champion's ranked products (top score.output_k)"))

# products hidden by the near-duplicate collapse (mmpipeline.score.dedupe): per run date and query, the
# hidden product, its group and the product shown in its place (the index expands a result from here)
register(TableSpec("gold.search_duplicates", [
    ("run_date", "date"), ("query_id", "string"), ("product_id", "string"), ("group_id", "string"),
    ("shown_product_id", "string"), ("shown_rank", "int"), ("score", "double"),
], keys=["run_date", "query_id", "product_id"], partition_by=["run_date"],
    description="per run date and query: products collapsed into a duplicate shown in gold.search_ranking"))

register(TableSpec("gold.product_vectors", [
    ("run_date", "date"), ("product_id", "string"), ("modalities", "string"),  # text | image | text+image
    ("fusion", "string"),  # how the vector was fused, e.g. "wsum(text=0.5,image=0.5)"
    ("text_model", "string"), ("image_model", "string"), ("dim", "int"), ("vector", "array<float>"),
    ("content_hash", "string"),  # sha256 of the row's content (vector, models, fusion): the merge key's payload
], keys=["product_id"],
    description="one fused, L2-normalised vector per product for the online ANN index; merged by content "
                "hash each night (run_date = the run that last changed the row; vanished products deleted)"))

register(TableSpec("gold.search_index", _RANKING_COLUMNS, keys=["query_id", "rank"],
                   description="the served feed: the currently published ranking (each publish = one Delta "
                               "version; rollback restores an earlier one)"))

register(TableSpec("ops.score_runs", [
    ("run_date", "date"), ("model_name", "string"), ("model_version", "string"), ("model_run_id", "string"),
    ("engine", "string"), ("queries", "long"), ("candidate_pairs", "long"), ("rows_written", "long"),
    ("products_vectors", "long"), ("non_finite_scores", "long"), ("candidate_recall", "string"),
    ("stage_seconds", "string"), ("pairs_per_second", "double"), ("ranking_version", "long"),
    ("scored_at", "timestamp"),
], keys=["run_date"], description="one row per scored run date (latest attempt): sizes, recall, timings"))

register(TableSpec("ops.retrieval_indexes", [
    ("run_date", "date"), ("modality", "string"),  # text | image (dense) | bm25
    ("model_name", "string"),  # the embedding model; bm25s for BM25
    ("kind", "string"),  # exact | ivf | hnsw | bm25
    ("params", "string"),  # JSON: nlist / nprobe or M / efConstruction / efSearch after tuning
    ("vectors", "long"), ("dim", "int"), ("fingerprint", "string"),  # sha256 of ids, vectors and settings
    ("path", "string"),  # the artifact: <lake>/_artifacts/ann/<model>/<modality>/<run_date>/<fp> or bm25/<run_date>/<fp>
    ("reused", "boolean"),  # true when a re-run loaded the index saved earlier for the same vectors
    ("build_seconds", "double"), ("recall", "double"),  # recall@recall_k vs exact search at build time
    ("recall_k", "int"), ("tune_queries", "long"), ("recorded_at", "timestamp"),
], keys=["run_date", "modality", "model_name"],
    description="the candidate indexes (dense and BM25) each score run used (latest attempt per date and model)"))

register(TableSpec("ops.index_versions", [
    ("event_at", "timestamp"), ("action", "string"),  # publish | reject | rollback
    ("run_date", "date"), ("status", "string"),  # current | rejected
    ("index_version", "long"),  # Delta version of gold.search_index this event made current
    ("ranking_version", "long"), ("vectors_version", "long"), ("model_name", "string"),
    ("model_version", "string"), ("queries", "long"), ("rows", "long"), ("detail", "string"),
], description="append-only log of publish / reject / rollback events; the latest publish or rollback is current"))

# ------------------------------------------------------------------------------------ type helpers


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


_SIMPLE_ARROW = {
    "string": pa.string(), "double": pa.float64(), "float": pa.float32(), "int": pa.int32(),
    "long": pa.int64(), "bigint": pa.int64(), "boolean": pa.bool_(), "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"), "binary": pa.binary(),
}


def arrow_type(t: str) -> pa.DataType:
    t = t.strip()
    if t in _SIMPLE_ARROW:
        return _SIMPLE_ARROW[t]
    if t.startswith("array<") and t.endswith(">"):
        return pa.list_(arrow_type(t[6:-1]))
    if t.startswith("map<") and t.endswith(">"):
        k, v = _split_top(t[4:-1])
        return pa.map_(arrow_type(k), arrow_type(v))
    raise ValueError(f"unsupported type {t!r}")


def arrow_schema(spec: TableSpec | list[tuple[str, str]]) -> pa.Schema:
    cols = spec.columns if isinstance(spec, TableSpec) else spec
    return pa.schema([pa.field(c, arrow_type(t)) for c, t in cols])


def spark_schema(spec: TableSpec | list[tuple[str, str]]):
    """The Spark schema, derived from the Arrow one by PySpark's own converter (one type parser)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema(spec))
