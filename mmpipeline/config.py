"""The one typed configuration object.

A YAML file, then environment overrides (``MMP__SECTION__FIELD=value``, double underscores nest),
then explicit ``--set section.field=value`` overrides, validated once by pydantic and passed down.
No other module reads environment variables.

Relative paths in the file are resolved against the directory of the config file, and
``${VAR:-default}`` is expanded inside string values, so ``configs/homedepot.yaml`` can say
``${MMP_DATASETS:-../../shared/datasets}/homedepot/relevance.csv``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "MMP__"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Model):
    """One input: where it is, how to read it, and how its columns map onto the canonical schema.

    ``columns`` maps a canonical column to a source column name or a Spark SQL expression over the
    source columns (e.g. ``concat(id, '.jpg')``). ``attributes`` maps attribute names to source
    columns or expressions; they land in the canonical ``attributes`` map column.
    """

    path: str | None = None
    format: Literal["csv", "jsonl", "json", "parquet"] = "csv"
    adapter: str = "generic"  # generic | attribute_queries | ...; see mmpipeline.sources
    options: dict[str, Any] = Field(default_factory=dict)  # reader options (header, sep, encoding...)
    columns: dict[str, str] = Field(default_factory=dict)
    attributes: dict[str, str] = Field(default_factory=dict)
    image_root: str | None = None  # for products: root folder that image references resolve under
    audio_root: str | None = None  # for voice_queries: root folder that audio references resolve under
    params: dict[str, Any] = Field(default_factory=dict)  # adapter-specific parameters


class LakeConfig(_Model):
    root: str = "var/lake"
    engine: Literal["auto", "delta-spark", "delta-rs"] = "auto"


class SparkConfig(_Model):
    master: str = "local[2]"
    app_name: str = "mmpipeline"
    conf: dict[str, str] = Field(default_factory=dict)


class MlflowConfig(_Model):
    tracking_uri: str = "sqlite:///var/mlflow/mlflow.db"
    registry_uri: str | None = None
    artifact_root: str = "var/mlflow/artifacts"
    experiment: str = "mmpipeline"
    model_name: str = "mm-fusion-ranker"


class ImageLimits(_Model):
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # decompression-bomb guard (width * height from the header)
    min_side: int = 8
    allowed_formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP"])


class CleanConfig(_Model):
    min_title_chars: int = 2
    max_title_chars: int = 500
    max_price: float = 1_000_000.0
    default_currency: str = "USD"
    grade_min: float = 0.0  # judgments outside [grade_min, grade_max] are quarantined
    grade_max: float = 3.0
    image_partitions: int | None = None  # Spark partitions for the parallel image checks (None: default parallelism)
    image: ImageLimits = Field(default_factory=ImageLimits)
    # deletion guard for snapshot tables (silver.products/queries/judgments/voice_queries): a run may
    # delete at most this share of a table's rows; beyond it clean refuses and writes nothing
    max_delete_share: float = Field(0.1, ge=0.0, le=1.0)
    # a configured source with no records is refused (it would empty its silver table) unless set
    # for the run (CLI: --allow-empty-source)
    allow_empty_source: bool = False
    # a share of quarantined rows above this for any source stops clean as a critical failure, before
    # anything is written (a misread export: wrong sep/quote/escape/multiLine). Validate warns from
    # quality.max_quarantine_share already.
    max_quarantine_share: float = Field(0.5, ge=0.0, le=1.0)


class QualityConfig(_Model):
    """Great Expectations thresholds."""

    max_row_count_change: float = 0.5  # relative change against the previous run; beyond = failure
    min_decodable_image_share: float = 0.5  # among products that reference an image
    max_quarantine_share: float = 0.2  # warning above this
    fail_on_warning: bool = False
    min_rows: int = 1  # every validated silver table (partition) must have at least this many rows
    rating_range: tuple[float, float] = (0.0, 5.0)
    event_types: list[str] = Field(default_factory=lambda: ["impression", "click", "add_to_cart", "purchase"])
    image_statuses: list[str] = Field(default_factory=lambda: [
        "ok", "none", "unchecked", "missing", "unreadable", "corrupt", "too_large", "too_small", "bomb",
        "unsupported", "outside_root"])
    decodable_image_statuses: list[str] = Field(default_factory=lambda: ["ok"])
    tables: list[str] = Field(default_factory=lambda: [
        "silver.products", "silver.queries", "silver.judgments", "silver.interactions", "silver.voice_queries"])
    data_docs: bool = True  # GE Data Docs HTML under <lake root>/ops/data_docs


class EmbedModelConfig(_Model):
    kind: Literal["sentence-transformers", "transformers", "torchvision", "clip", "trained-tower"] = "sentence-transformers"
    name: str = "all-MiniLM-L6-v2"  # model id, local path, or torchvision architecture
    weights: str | None = None  # pretrained weights id/path where available
    version: str | None = None


class EmbedConfig(_Model):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = 128
    image_batch_size: int = 64
    max_text_length: int = 128
    num_workers: int = 2
    image_size: int = 48  # image encoder input side (px); the trained tower records its own
    text_model: EmbedModelConfig = Field(default_factory=EmbedModelConfig)
    image_model: EmbedModelConfig = Field(
        default_factory=lambda: EmbedModelConfig(kind="trained-tower", name="resnet18")
    )
    engine: Literal["local", "spark"] = "local"
    # image tower training (no pretrained image weights offline)
    tower_epochs: int = 4
    tower_lr: float = 2e-3
    tower_holdout_share: float = 0.1
    max_products: int | None = None  # subsample for demos / CI
    tower_batch_size: int = 128
    tower_hidden: int = 512  # projection MLP width
    tower_seed: int = 0
    tower_max_products: int | None = None  # subsample the training pairs
    tower_max_holdout: int | None = 1000  # held-out products used for Recall@10 (gallery size)
    tower_alias: str = "champion"  # registry alias of <mlflow.model_name>-image-tower the embed job loads
    # negatives: "batch" (in-batch symmetric InfoNCE) | "catalog" (every training product's text).
    # Measured (fashion, 3,000 products, 48 px, 4 epochs; image-cosine NDCG@10 on 94 test queries):
    # batch 0.273, catalog 0.165; group_by category_path: held-out Recall@10 0.288 vs 0.608 after 2
    # epochs (stopped). Both stay off by default.
    tower_negatives: Literal["batch", "catalog"] = "batch"
    tower_group_by: str | None = None  # silver.products column (e.g. category_path): batches keep a group together
    tower_crop_scale: float = Field(1.0, gt=0.0, le=1.0)  # < 1: random crops of that much of the side (plus flips)
    tower_soft_targets: float = Field(0.0, ge=0.0)  # catalog negatives: > 0 shares the target over similar texts (temperature)
    # no tower registered: embed fails naming the train-image-tower stage, or (true) embeds text only
    images_optional: bool = False
    # embed job
    product_text_fields: list[str] = Field(default_factory=lambda: ["title", "description"])
    query_text_field: str = "query_norm"
    embed_images: bool = True
    normalize: bool = True  # L2-normalise stored vectors
    progress: bool = True  # tqdm bars on long encodes
    spark_partitions: int = 4  # engine spark: partitions of the rows to encode (at least)
    spark_rows_per_partition: int = 50_000  # engine spark: more partitions above this many distinct contents each
    spark_torch_threads: int = 0  # engine spark: torch threads per Python worker (0: cores / Spark's default parallelism)


class TextTuneConfig(_Model):
    """The domain-adapted text tower (``mmpipeline run tune-text-tower``, mmpipeline.embed.text_tune):
    the embed stage's sentence-transformers text model fine-tuned on training-split (query, relevant
    product text) pairs with MultipleNegativesRankingLoss; registered as <mlflow.model_name>-text-tower
    and promoted (alias) only when it beats the frozen model's text-cosine NDCG@10 on validation queries."""

    enabled: bool = True  # false: the stage does nothing
    use_in_embed: bool = True  # the embed stage (and query encoder) use the promoted tuned model
    alias: str = "champion"
    # 6,000 pairs x 1 epoch: ~2.5 min on 2 CPU cores (a step of 32 triplets ~0.75 s); make run's demo
    # subsample uses 1,000 (scripts/run_nightly.sh). Home Depot whole sample: validation text-cosine NDCG@10
    # 0.619 with 1,000 pairs, 0.637 with 6,000
    max_pairs: int | None = 6000  # sample of training pairs (None: all)
    epochs: int = 1
    batch_size: int = 32  # pairs per step (the in-batch negatives)
    max_seq_length: int = 48
    lr: float = 3e-5
    warmup_share: float = Field(0.1, ge=0.0, le=1.0)
    min_label: float = 0.5  # a pair is a positive when its label (grade normalised to [0, 1]) is at least this
    hard_negatives: bool = True  # judged low-grade products of the same query as hard negatives (triplets)
    negative_max_label: float = 0.25  # ... whose label is at most this
    max_eval_queries: int = 300  # validation queries for the promotion check
    max_eval_products: int | None = 3000  # ranked catalog in the check: judged products + a sample (None: all)
    min_gain: float = 0.0  # promote only when tuned NDCG@10 > frozen NDCG@10 + min_gain
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class RankConfig(_Model):
    """Fusion ranker: training data, model, training, evaluation and gating (mmpipeline.rank)."""

    fusion: Literal["concat", "weighted", "attention"] = "attention"
    loss: Literal["pointwise", "pairwise", "listwise", "lambda"] = "listwise"
    pointwise: Literal["bce", "mse"] = "bce"  # the pointwise loss flavour
    listwise_temperature: float = Field(0.1, gt=0.0)  # ListNet: softmax temperature of the labels
    hidden_dim: int = 64
    dropout: float = 0.1
    # also feed the 384-d query*product interaction vectors to the branches (not only the per-modality
    # cosines, BM25 and numeric features): +0.05 NDCG@10 on fashion, but overfits Home Depot's few
    # hundred training queries (-0.09), so off by default
    use_vectors: bool = False
    epochs: int = 20
    batch_queries: int = 32
    max_list_size: int = 64  # items per query list in training (judged first, then negatives)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4  # early stopping on validation NDCG
    # the grade head: weight of a pointwise MSE on the judged pairs' normalised grade, trained jointly
    # with the ranking loss on the same towers; its prediction is the model's grade (grade RMSE).
    # 0: no grade head (RMSE from the calibrated ranking score). Home Depot demo, 3 seeds: grade RMSE 0.508 -> 0.488,
    # NDCG@10 0.622 -> 0.620 (noise)
    grade_weight: float = Field(1.0, ge=0.0)
    # the ranker's scalar features before standardisation: standard (z-score only), log1p (signed log1p of the
    # non-indicator columns: BM25 scores and counts are heavy-tailed) or quantile (training rows' empirical CDF)
    scalar_transform: Literal["standard", "log1p", "quantile"] = "standard"
    # piecewise-linear encoding of the non-indicator scalar features into this many quantile bins, next to
    # their z-scores (rank.fusion.base.FusionConfig.ple_bins); 0: off. Home Depot whole sample, 3 seeds,
    # held-out NDCG@10: off 0.4507, 8 bins 0.4572 (each seed up), 16 bins 0.4553, 32 bins 0.4535; fashion as
    # given, 2 seeds: 0.9020 -> 0.9029 (grade RMSE 0.160 -> 0.148)
    ple_bins: int = Field(8, ge=0, le=64)
    # training only: Gaussian noise (in standard deviations) on the z-scored scalar features, a data augmentation
    # (rank.fusion.base.FusionConfig.input_noise); 0: off
    input_noise: float = Field(0.0, ge=0.0, le=5.0)
    # a learned low-rank bilinear query-image similarity in the image branch (rank.fusion.base.FusionConfig.
    # bilinear_rank; a catalog without images: nothing). 0: off. Fashion whole sample, colour words removed,
    # seeds 42-45: NDCG@10 +0.016 on average, grade RMSE -0.04; on text vectors (Home Depot) it overfit
    bilinear_rank: int = Field(32, ge=0, le=256)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    score_batch_size: int = 8192
    # training data
    negatives_random: int = 10
    negatives_hard: int = 10
    hard_pool_k: int = 50  # hard negatives are drawn from the top-k nearest products by embedding
    lexical_hard_negatives: bool = True  # also from the BM25 top-k (what the reranker sees as candidates)
    # the nearest-product search for hard negatives: exact (FAISS flat: a scan of the catalog per query),
    # ivf (FAISS IVF, sqrt(n) lists, 16 probed: about 1/60 of the catalog per query at 1M products), or
    # auto = exact below hard_index_exact_below catalog products, else ivf
    hard_index: Literal["auto", "exact", "ivf"] = "auto"
    hard_index_exact_below: int = 200_000
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "valid": 0.15, "test": 0.15})
    interaction_grades: dict[str, float] = Field(default_factory=lambda: {
        "purchase": 3.0, "add_to_cart": 2.0, "click": 1.0, "impression": 0.0})
    max_train_queries: int | None = None  # subsample (by hash) for demos / CI
    # build-training-data: local (driver: the featuriser over the whole catalog in this process) or spark
    # (negatives and features per query partition on the executors, each Python worker loads the
    # featuriser once; the driver holds the judged pairs only)
    data_engine: Literal["local", "spark"] = "local"
    data_partitions: int = 0  # engine spark: query partitions (0: Spark's default parallelism)
    text_model_name: str | None = None  # which gold.product_embeddings model to use (None: the most common)
    image_model_name: str | None = None
    # evaluation and gating
    primary_metric: str = "ndcg_at_10"
    promote_margin: float = 0.0
    slice_tolerance: float = 0.02
    # slices the gate checks (against the champion with slice_tolerance, against the baselines with
    # slice_regression_max); a slice with fewer than slice_min_queries queries is not gated
    gate_slices: list[Literal["short_queries", "long_queries", "no_image_products", "image_products"]] = Field(
        default_factory=lambda: ["short_queries", "long_queries", "no_image_products", "image_products"])
    # refuse promotion when the challenger trails any baseline (BM25, text / image cosine) on a gated
    # slice (or overall) by more than this (primary metric); None: no baseline check
    slice_regression_max: float | None = None
    # refuse promotion (the first model too) when the challenger's overall primary metric is below the
    # best baseline's + this: a model that loses to BM25 over the whole held-out set is never champion
    # (the night then keeps the previous champion or, with none, scoring stops with one line). None: no check
    min_gain_over_baselines: float | None = 0.0
    slice_min_queries: int = 0
    eval_k: int = 10
    recall_k: int = 100
    candidates_k: int = 100  # evaluate() without a candidate generator (bench quality); the evaluate stage uses score.candidates_k
    relevant_min_label: float = 0.5  # normalised grade at or above which a product counts as relevant
    long_query_tokens: int = 4  # slices: short = fewer tokens, long = at least this many
    max_eval_queries: int | None = None
    eval_batch_queries: int = 64
    # text fields besides the title whose BM25 / token coverage enter the ranker's features (where the
    # source maps them): any of brand, category_path, description, attributes; [] = title-only features
    text_fields: list[Literal["brand", "category_path", "description", "attributes"]] = Field(
        default_factory=lambda: ["brand", "category_path", "description", "attributes"])
    # Kaggle-style query/title match features (query words in the title exact and fuzzy, last word,
    # whole query, token-set ratio, numbers and units; query-word coverage of brand / description /
    # attributes separately): retrieval.features.MATCH_FEATURES
    match_features: bool = True
    # quality benchmark
    bench_fusions: list[str] = Field(default_factory=lambda: ["concat", "weighted", "attention"])
    bench_lambdamart: bool = True  # the LightGBM lambdarank peer on the ranker's own features
    lambdamart_rounds: int = 500  # boosting rounds at most (early stopping on validation NDCG@eval_k)
    lambdamart_grade: bool = True  # the peer's grade RMSE from its own LightGBM regression on the judged grade
    colour_attribute: str = "colour"  # attribute whose values are removed from titles in the colour-free run


class AnnConfig(_Model):
    """Dense candidate search (``score.ann``): FAISS, exact below a catalog size, approximate above it.

    ``kind``: ``auto`` = exact (IndexFlatIP) for fewer than ``exact_below`` vectors, else
    ``auto_kind``; ``exact`` / ``ivf`` / ``hnsw`` force one. Approximate indexes are tuned at build
    time: ``nprobe`` (IVF) or ``efSearch`` (HNSW) doubles from the configured value until recall@k
    against exact search on ``tune_queries`` sampled vectors reaches ``target_recall``.
    """

    kind: Literal["auto", "exact", "ivf", "hnsw"] = "auto"
    exact_below: int = 100_000  # auto: exact search under this many vectors
    auto_kind: Literal["ivf", "hnsw"] = "ivf"
    ivf_nlist: int | None = None  # None: 4 * sqrt(n), at least 16
    ivf_nprobe: int = 16  # starting value; tuning raises it
    ivf_train_size: int = 100_000  # vectors sampled to train the coarse quantizer
    hnsw_m: int = 32
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int = 128  # starting value; tuning raises it
    target_recall: float = 0.95  # recall@tune_k against exact search the tuning aims for
    tune_k: int = 100
    tune_queries: int = 500  # 0: no tuning (the configured nprobe / efSearch as they are)
    seed: int = 0
    threads: int | None = None  # FAISS OpenMP threads (None: FAISS's default)
    save: bool = True  # score: save the index under <lake>/_artifacts/ann and record it in ops.retrieval_indexes


class ScoreConfig(_Model):
    head_queries: int = 1000
    query_list: str | None = None  # optional file with one query per line
    candidates_k: int = 100  # per retrieval source (text, image, bm25); the union is scored
    candidate_sources: list[Literal["text", "image", "bm25"]] = Field(default_factory=lambda: ["text", "image", "bm25"])
    output_k: int = 50
    min_results_per_query: int = 10
    min_query_coverage: float = Field(0.95, ge=0.0, le=1.0)  # publish: share of the run's query set ranked
    max_abs_score: float = Field(1e6, gt=0.0)  # publish: |score| above this is a sentinel, not a score
    model_alias: str = "champion"
    ann: AnnConfig = Field(default_factory=AnnConfig)
    engine: Literal["local", "spark"] = "local"  # spark: mapInPandas, model loaded once per partition
    batch_size: int = 8192  # (query, product) pairs per model call
    query_batch_size: int = 256  # queries per candidate-generation block
    spark_partitions: int | None = None  # scoring partitions (None: Spark's default parallelism)
    # product_vectors: normalised weighted sum of the normalised per-modality vectors (same space)
    fusion_weights: dict[str, float] = Field(default_factory=lambda: {"text": 0.5, "image": 0.5})
    recall_min_grade: float | None = None  # judged relevant for candidate recall; None: above the lowest grade
    # near-duplicate collapse (mmpipeline.score.dedupe): one listing per group of products with the same
    # normalised title (title_image: and the same image hash where present); the others go to
    # gold.search_duplicates; the publish gate refuses duplicate listings within the top collapse_check_k
    collapse_duplicates: bool = True
    collapse_key: Literal["title_image", "title"] = "title_image"
    collapse_check_k: int = Field(10, ge=0)  # 0: no gate

    @field_validator("ann", mode="before")
    @classmethod
    def _ann_kind_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v  # `score.ann: exact` = `score.ann.kind: exact`


class VoiceAdaptConfig(_Model):
    """The recogniser adapted to the shop (``mmpipeline run tune-asr``, mmpipeline.voice.adapt): Whisper's
    encoder fine-tuned on the shop's own training-split queries spoken by espeak-ng's formant voices
    (with noise, speed and storage-rate augmentation like real phone audio), registered as
    <mlflow.model_name>-asr and promoted only when it lowers the word error rate on synthetic
    validation-split queries by ``min_gain`` without raising it on the labelled clips (voice queries with
    a reference transcript) by more than ``max_labelled_regression``. ``transcribe`` and ``search
    --audio`` then recognise with the promoted version (``use_in_transcribe``)."""

    enabled: bool = False  # CPU cost: ~9 s per step of 8 clips on 2 cores (1,500 clips ~25 min); minutes on a GPU
    use_in_transcribe: bool = True
    # both: the adapted and the base model decode every clip and the surer (avg log-prob) wins, their
    # n-best lists joined for the rescoring (2x recognition time); adapted: the adapted model alone.
    # Greedy, all 500 Home Depot clips, WER v2 neural / formant: base 0.408 / 0.942, adapted 0.447 / 0.260,
    # both 0.370 / 0.280
    decode: Literal["both", "adapted"] = "both"
    alias: str = "champion"
    voices: list[str] = Field(default_factory=lambda: ["en-us", "en-us+f3", "en-us+m3", "en", "en+f2",
                                                       "en-gb-scotland", "en-029"])  # espeak-ng voice names
    speeds: list[float] = Field(default_factory=lambda: [0.85, 1.0, 1.0, 1.2])  # speaking-rate factors, drawn
    noise_snr_db: list[float | None] = Field(default_factory=lambda: [None, None, 20.0, 10.0])  # drawn; white/pink/brown
    sample_rates: list[int] = Field(default_factory=lambda: [8000, 16000, 22050, 44100])  # storage rate, drawn
    max_texts: int = 1500  # training clips (one per train-split query, a deterministic sample)
    valid_texts: int = 100  # synthetic validation clips (validation-split queries)
    max_labelled_clips: int = 200  # labelled real clips in the promotion check (0: none)
    epochs: float = 1.0
    batch_size: int = 8
    lr: float = 1e-4
    train_part: Literal["encoder", "all"] = "encoder"  # encoder: acoustic adaptation, the decoder's language model kept
    min_gain: float = 0.02  # synthetic validation WER must fall by more than this
    max_labelled_regression: float = 0.0  # labelled clips' WER may rise at most this much
    refresh_days: int = 7  # a promoted version younger than this is kept even when the query log changed (0: retrain on any change)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class VoiceConfig(_Model):
    """Voice queries: clip checks (clean), preprocessing, recognition and catalog-aware correction
    (mmpipeline.voice)."""

    # clip checks in the clean stage
    max_bytes: int = 50 * 1024 * 1024
    min_duration_s: float = 0.3
    max_duration_s: float = 30.0  # Whisper decodes 30 s windows; a spoken query is a few seconds
    silence_dbfs: float = -60.0  # RMS level below which a clip counts as silent
    check_partitions: int | None = None  # Spark partitions for the parallel clip checks
    # preprocessing
    target_lufs: float = -23.0  # BS.1770 loudness target
    trim_db: float = 40.0  # leading/trailing frames this far below the loudest are trimmed
    # speech played at this speed before recognition (phase vocoder, same pitch); < 1 slows it down.
    # Greedy tiny.en, 30 clips each: 0.85 takes formant-voice WER 1.05 -> 0.94 but neural 0.34 -> 0.47, so off
    time_stretch: float = 1.0
    # recognition (faster-whisper)
    model: str | None = None  # local CTranslate2 Whisper dir or a packaged name (tiny.en, base: voice.packaged); None: tiny.en
    allow_download: bool = False  # let faster-whisper fetch a model *name* from the HF hub
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "auto"  # auto: int8 on CPU, float16 on CUDA
    cpu_threads: int = 0  # 0: CTranslate2's default
    batch_size: int = 16  # clips per encoder/decoder call
    beam_size: int = 5
    nbest: int = 5  # hypotheses kept per clip (<= beam_size) for the vocabulary rescoring
    # catalog-aware choice among the n-best: avg log-prob + rescore_weight x share of known words; 0: off
    rescore_weight: float = 1.0
    # second decode of the low-confidence clips only (best avg log-prob below this; None: off): the
    # hypotheses of a time-stretched copy (redecode_time_stretch; 1.0: none) and of temperature
    # sampling (redecode_temperatures, redecode_best_of samples each, seeded) join the clip's n-best
    # list, and the rescoring above chooses among all of them. Off: no setting helped on the first 100
    # Home Depot clips (WER neural/formant, correction held out: none 0.319/0.905; -0.9 + stretch
    # 0.319/0.898; -0.5 + stretch 0.324/0.905; -0.5 + temperatures 0.2,0.5,0.8 0.324/0.932) and each
    # re-decoded clip costs a second decode (at -0.5, 46 of 100 clips: about +45% recognition time)
    redecode_below_logprob: float | None = None
    redecode_time_stretch: float = 0.85
    redecode_temperatures: list[float] = Field(default_factory=list)
    redecode_best_of: int = 5
    redecode_max_compression_ratio: float = 2.4  # second-decode hypotheses more repetitive (gzip) are dropped
    # catalog-aware recognition
    # logged queries checked against the audio (voice.vocab.verify_queries): per clip the verify_queries
    # logged queries closest to its whole n-best list are scored by Whisper itself (forced avg log-prob,
    # voice.asr.Recognizer.score_texts); the best one with similarity >= verify_min_similarity whose
    # score is within verify_margin of the best hypothesis' replaces the transcript. 0: off. Chosen on the
    # 303 neural Home Depot clips (base tiny.en, BM25 NDCG voice/typed): full log 0.837 -> 0.909 with the
    # clip's own query held out unchanged (0.613); margin 2.0 / similarity 0.6: 0.967 but held out 0.603.
    # bench voice, all 500 clips, adapted + base: champion NDCG neural 0.871x -> 0.915x (README)
    verify_queries: int = 5
    verify_margin: float = 1.5
    verify_min_similarity: float = 0.7
    # decoding prompt from the shop's vocabulary; off by default: with Whisper tiny.en both forms raised
    # the word error rate on the Home Depot clips (bench voice, 60 clips: neural 0.32 -> 0.36 with the
    # frequent-query prompt, -> 0.59 with brand hotwords; it spells numbers out and hyphenates).
    # Re-measured with the v2 WER normaliser (which forgives spelled numbers), first 100 clips, 40
    # frequent held-out queries as initial_prompt: plain neural/formant 0.320/0.905 -> 0.315/0.803, but
    # with rescore + correction 0.305/0.891 -> 0.340/0.789: helps the formant voices only, so still off
    prompt: Literal["none", "initial_prompt", "hotwords", "both"] = "none"
    prompt_queries: int = 40  # frequent queries in the prompt
    prompt_brands: int = 40
    prompt_max_chars: int = 600
    written_form: bool = True  # spoken sizes written the shop's way: "3 slash 4" -> 3/4, "2 by 4" -> 2x4
    correction: bool = True
    correct_below_logprob: float = -0.3  # snap transcripts whose avg log-prob is below this to a logged query
    # spelling + sound similarity (voice.vocab.Corrector.nearest_query) to snap a low-confidence transcript
    # to a logged query, and to snap any transcript (None: low-confidence ones only). See bench voice's
    # snap_curve: the closer the thresholds to 0, the better when the spoken query was typed before
    # ("full_log") and the worse when it is new ("held_out", a snap then picks a wrong query)
    min_query_similarity: float = 0.8
    snap_confident_above: float | None = 0.85
    # words the catalog/query-log vocabulary lacks -> nearest known word in spelling and sound
    word_correction: Literal["off", "low_confidence", "always"] = "low_confidence"
    min_word_similarity: float = 0.6  # spelling + phonetic-key similarity to replace an unknown word
    max_no_speech_prob: float = 0.8  # above: not used as a search query
    max_clips: int | None = None  # subsample (demo / CI)
    adapt: VoiceAdaptConfig = Field(default_factory=VoiceAdaptConfig)


class Config(_Model):
    name: str = "mmpipeline"
    run_date: dt.date | None = None  # default: today (UTC) at run time
    config_path: str | None = None  # set by load_config
    lake: LakeConfig = Field(default_factory=LakeConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    text_tune: TextTuneConfig = Field(default_factory=TextTuneConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        unknown = set(v) - {"products", "queries", "judgments", "interactions", "voice_queries"}
        if unknown:
            raise ValueError(f"unknown source(s) {sorted(unknown)}; expected products, queries, judgments, interactions, voice_queries")
        return v

    def effective_run_date(self, override: dt.date | str | None = None) -> dt.date:
        if override is not None:
            if isinstance(override, dt.date):
                return override
            try:
                return dt.date.fromisoformat(str(override))
            except ValueError as e:
                raise ConfigError(f"run date {str(override)!r} is not a valid date ({e}): "
                                  "pass --run-date as YYYY-MM-DD, e.g. 2026-03-01") from None
        return self.run_date or dt.datetime.now(dt.timezone.utc).date()

    @property
    def lake_root(self) -> Path:
        return Path(self.lake.root)


# --------------------------------------------------------------------------------------- loading


class ConfigError(ValueError):
    """A config file or override a person has to fix; ``str()`` is one line (what, where, what to do)."""


def describe_config_error(e: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """One line for a config mistake (unknown key, wrong type, missing file), or None if ``e`` is not one."""
    from pydantic import ValidationError

    where = f"config {path}" if path else "config"
    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, FileNotFoundError) and "config file not found" in str(e):
        return f"{e}: pass an existing YAML file to --config (see configs/)"
    if isinstance(e, yaml.YAMLError):
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{where}:{at} is not valid YAML ({getattr(e, 'problem', None) or type(e).__name__}): fix the syntax"
    if isinstance(e, ValidationError):
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ())) or "(top level)"
            kind = err.get("type", "")
            if kind == "extra_forbidden":
                parts.append(f"{loc}: unknown key (check its spelling and section; see mmpipeline/config.py)")
            else:
                got = err.get("input")
                got_s = f", got {got!r}" if not isinstance(got, (dict, list)) else ""
                parts.append(f"{loc}: {err.get('msg')}{got_s}")
        return f"{where}: " + "; ".join(parts) + " (fix the file, an MMP__ variable or a --set override)"
    return None


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(2) if m.group(2) is not None else ""), value)
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    return value


def _set_dotted(data: dict, dotted: list[str], value: Any) -> None:
    node = data
    for key in dotted[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot override {'.'.join(dotted)}: {key} is not a section")
    node[dotted[-1]] = value


def _resolve(base: Path, p: str | None) -> str | None:
    if p is None or p == "" or "://" in p:
        return p
    path = Path(p).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_sqlite(base: Path, uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith("sqlite:////"):
        return prefix + str((base / uri[len(prefix):]).resolve())
    if "://" not in uri:  # a plain folder: file store
        return str((base / uri).resolve())
    return uri


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read the YAML file (optional), apply env and explicit overrides, resolve paths, validate."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config {p}: the top level must be a mapping of sections (name:, lake:, sources: ...)")
        base = p.parent
        data["config_path"] = str(p)
    data = _expand(data, env)
    for key, raw in sorted(env.items()):
        if key.startswith(ENV_PREFIX):
            _set_dotted(data, key[len(ENV_PREFIX):].lower().split("__"), yaml.safe_load(raw))
    if overrides:
        if isinstance(overrides, Mapping):
            items = list(overrides.items())
        else:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"--set takes section.key=value, got {bad[0]!r} (e.g. --set clean.max_delete_share=0.2)")
            items = [tuple(o.split("=", 1)) for o in overrides]
        for k, v in items:
            _set_dotted(data, k.split("."), yaml.safe_load(v) if isinstance(v, str) else v)
    cfg = Config.model_validate(data)
    # resolve relative paths against the config file's folder
    cfg.lake.root = _resolve(base, cfg.lake.root)
    cfg.mlflow.tracking_uri = _resolve_sqlite(base, cfg.mlflow.tracking_uri)
    if cfg.mlflow.registry_uri:
        cfg.mlflow.registry_uri = _resolve_sqlite(base, cfg.mlflow.registry_uri)
    cfg.mlflow.artifact_root = _resolve(base, cfg.mlflow.artifact_root)
    for src in cfg.sources.values():
        src.path = _resolve(base, src.path)
        src.image_root = _resolve(base, src.image_root)
        src.audio_root = _resolve(base, src.audio_root)
        keep = src.params.get("sample_keep")
        if isinstance(keep, dict) and isinstance(keep.get("path"), str):
            keep["path"] = _resolve(base, keep["path"])
    if cfg.voice.model and (cfg.voice.model.startswith(".") or cfg.voice.model.startswith("/")):
        cfg.voice.model = _resolve(base, cfg.voice.model)
    if cfg.score.query_list:
        cfg.score.query_list = _resolve(base, cfg.score.query_list)
    for m in (cfg.embed.text_model, cfg.embed.image_model):
        if m.weights and (m.weights.startswith(".") or m.weights.startswith("/")):
            m.weights = _resolve(base, m.weights)
    return cfg
