"""(query, product) pair features: the fusion ranker's input, shared by training, evaluation and scoring.

:class:`PairFeaturizer` holds the catalog (titles, numeric attributes), the product vectors per
modality and the query vectors, plus a BM25 index over the product text
(:func:`mmpipeline.retrieval.text.product_text`: the same text candidate generation indexes).
``transform(queries, query_ids, product_ids)`` returns one row per pair with

* vector columns (``VECTOR_FEATURES``): the query's text vector and the product's text and image
  vectors (image vectors live in the text-embedding space, so ``q . p_image`` is meaningful); a
  missing modality is a zero vector with its ``has_*`` indicator at 0;
* scalar columns (``SCALAR_FEATURES``): cosine query-title and query-image, BM25 over the product
  text (raw and relative to the query's best catalog score), query-token coverage of the title, log price / popularity,
  rating, and missing-modality / missing-value indicators;
* per-field text columns (``FIELD_FEATURES``): BM25 over the title alone, BM25 over the product's
  other text fields (``rank.text_fields``: brand, category path, description and attribute values,
  where the source maps them) and the query-token coverage of those fields.

* match columns (``MATCH_FEATURES``, ``rank.match_features``): what a search team adds to a
  learning-to-rank model (the Home Depot Kaggle features): query words found in the title (count,
  exact, and the share found allowing typos / plural forms), whether the last query word (usually
  the product noun) is in the title, whether the whole query is, rapidfuzz's token-set similarity of
  query and title, numbers and number + unit pairs of the query found in the title, and the
  query-word coverage of the brand, the description and the attribute values counted separately
  (``FIELD_MATCH_FEATURES``, where ``rank.text_fields`` maps them).

A model uses the subset :func:`active_features` picks: a modality or a text field the catalog does
not have is absent (no all-zero column for a model to learn on); the model input frame always
carries every column, so one frame feeds any registered model.

That DataFrame is exactly what the registered model's ``predict`` takes. Training (rank), evaluation
(rank) and scoring (score) all build it here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from mmpipeline.retrieval import image_features
from mmpipeline.retrieval.bm25 import BM25Index
from mmpipeline.retrieval.dense import normalize
from mmpipeline.retrieval.embeddings import model_stats, pick_model, vector_blocks
from mmpipeline.retrieval.text import BM25_FIELDS, product_text, tokenize

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config
    from mmpipeline.lake import Lake

log = logging.getLogger(__name__)

VECTOR_FEATURES = ["q_text", "p_text", "p_image"]
# the scalar columns gold.training_data stores (its schema)
STORED_FEATURES = [
    "cos_text", "cos_image", "bm25", "bm25_rel", "title_coverage", "query_tokens", "title_tokens",
    "log_price", "log_popularity", "rating",
    "has_query_vec", "has_text", "has_image", "has_price", "has_popularity", "has_rating",
]
# per-field text features: recomputed from the catalog when a stored table lacks them
FIELD_FEATURES = ["bm25_title", "bm25_fields", "fields_coverage", "has_fields"]
# Kaggle-style query/title match features (recomputed like the field features; rank.match_features)
TITLE_MATCH_FEATURES = ["title_matches", "title_fuzzy_coverage", "last_word_in_title", "query_in_title",
                        "title_set_ratio", "number_coverage", "unit_coverage", "has_query_number"]
# query-word coverage per text field, counted separately (only fields the catalog has)
FIELD_MATCH = {"brand": "brand_coverage", "description": "description_coverage", "attributes": "attributes_coverage"}
FIELD_MATCH_FEATURES = list(FIELD_MATCH.values())
MATCH_FEATURES = TITLE_MATCH_FEATURES + FIELD_MATCH_FEATURES
SCALAR_FEATURES = STORED_FEATURES + FIELD_FEATURES + MATCH_FEATURES + image_features.FEATURES
IMAGE_FEATURES = ["cos_image", "has_image", *image_features.FEATURES]
# which scalar features feed which modality branch of the fusion model
MODALITY_SCALARS = {
    "text": ["cos_text", "bm25", "bm25_rel", "title_coverage", "query_tokens", "title_tokens", "has_text",
             "has_query_vec", *FIELD_FEATURES, *MATCH_FEATURES],
    "image": list(IMAGE_FEATURES),
    "numeric": ["log_price", "log_popularity", "rating", "has_price", "has_popularity", "has_rating"],
}
# the text fields (silver.products columns) besides the title that can enter the field features
TEXT_FIELDS = ("brand", "category_path", "description", "attributes")
# indicator columns are not standardised
INDICATORS = [c for c in SCALAR_FEATURES if c.startswith("has_")]
FEATURE_COLUMNS = VECTOR_FEATURES + SCALAR_FEATURES


# bytes of per-query whole-catalog score rows a featuriser keeps (each cache: BM25, title + fields)
ROW_CACHE_BYTES = 256 << 20
# query words whose fuzzy title-word matches a featuriser keeps (a few ids each)
FUZZY_CACHE_WORDS = 200_000


def _bounded_put(cache: dict, key: Any, value: Any, max_entries: int) -> None:
    """Insert, dropping the oldest entries beyond ``max_entries`` (dicts keep insertion order)."""
    while len(cache) >= max_entries:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _read_as_of(lake: "Lake", name: str, columns: list[str], versions: dict[str, int], as_of: Any) -> pd.DataFrame:
    """``columns`` of table ``name`` at its pinned version, only rows with ``run_date <= as_of``."""
    df = lake.read_pandas(name, version=versions.get(name), columns=columns)
    if as_of is not None and "run_date" in df.columns:
        df = df[pd.to_datetime(df["run_date"]).dt.date <= pd.Timestamp(as_of).date()]
    return df


def _pick_model(df: pd.DataFrame, modality: str, wanted: str | None) -> str | None:
    return pick_model(model_stats(df[df["modality"] == modality]), wanted, f"{modality} vectors")


class TokenRows:
    """The distinct tokens of one text per product, as ids over a shared vocabulary (CSR: ``indptr``
    [n + 1] int64, ``ids`` int32): what a list of Python token sets held, at 4 bytes per token
    instead of about 60 (a set of strings per product was 1.2 GB of titles and several GB of
    descriptions per process at 1M products)."""

    __slots__ = ("indptr", "ids")

    def __init__(self, indptr: np.ndarray, ids: np.ndarray):
        self.indptr, self.ids = indptr, ids

    @classmethod
    def build(cls, token_lists: Any, vocab: dict[str, int]) -> "TokenRows":
        """From one iterable of tokens per product; new tokens are added to ``vocab``."""
        from array import array

        lens, flat = array("q", [0]), array("i")
        total = 0
        for toks in token_lists:
            ids = {vocab.setdefault(t, len(vocab)) for t in toks}
            flat.extend(sorted(ids))
            total += len(ids)
            lens.append(total)
        return cls(np.frombuffer(lens, dtype=np.int64).copy(), np.frombuffer(flat, dtype=np.int32).copy())

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.ids.nbytes)

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token ids of ``rows`` one after another, start and end of each row in that array)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lens = ends - starts
        stop = np.cumsum(lens)
        begin = stop - lens
        idx = np.arange(int(stop[-1]) if len(stop) else 0, dtype=np.int64) - np.repeat(begin - starts, lens)
        return self.ids[idx], begin, stop

    def counts(self, rows: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
        """Per row of ``rows``, how many of its distinct tokens are among ``query_ids``."""
        flat, begin, stop = self._gather(rows)
        q = np.asarray(query_ids, dtype=np.int64)  # sorted, distinct
        found = q[np.minimum(np.searchsorted(q, flat), len(q) - 1)] == flat if len(q) else np.zeros(len(flat), bool)
        hit = np.concatenate([[0], np.cumsum(found, dtype=np.int64)])
        return (hit[stop] - hit[begin]).astype(np.float32)

    def any_hits(self, rows: np.ndarray, hits: np.ndarray) -> np.ndarray:
        """[len(rows), T] bool: row ``i`` has a token ``j`` with ``hits[t, j]``, for each of the T rows of ``hits``."""
        flat, begin, stop = self._gather(rows)
        cs = np.concatenate([np.zeros((hits.shape[0], 1), np.int64), np.cumsum(hits[:, flat], axis=1, dtype=np.int64)],
                            axis=1)
        return (cs[:, stop] - cs[:, begin]).T > 0


def catalog_frame(lake: "Lake", as_of: Any = None, versions: dict[str, int] | None = None) -> pd.DataFrame:
    """The catalog columns the featuriser reads from ``silver.products`` (rows with ``run_date <= as_of``
    when given; ``versions`` pins table versions): :meth:`PairFeaturizer.from_lake` builds on it, and
    ``bench quality`` rebuilds a featuriser from it with colour words removed."""
    cols = ["product_id", *dict.fromkeys([*BM25_FIELDS, *TEXT_FIELDS]), "price", "popularity", "rating", "run_date"]
    return _read_as_of(lake, "silver.products", cols, versions or {}, as_of)


@dataclass
class PairFeaturizer:
    """Featurises (query, product) pairs over a fixed catalog.

    ``products``: DataFrame with ``product_id``, ``title`` and optionally ``brand``, ``category_path``,
    ``description`` (BM25 text), ``price``, ``popularity``, ``rating``. ``product_vectors``: modality -> (ids, matrix). ``query_vectors``: (ids, matrix) of
    query text vectors keyed by query id. ``query_encoder``: optional callable mapping texts to
    vectors, used for queries without a stored vector.
    """

    products: pd.DataFrame
    product_vectors: dict[str, tuple[Sequence[str], np.ndarray]]
    query_vectors: tuple[Sequence[str], np.ndarray] | None = None
    query_encoder: Callable[[list[str]], np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    bm25: BM25Index | None = None
    text_fields: Sequence[str] | None = None  # fields besides the title in the field features (None: all TEXT_FIELDS)
    match_features: bool = True  # the MATCH_FEATURES columns enter the model (rank.match_features)
    # the product_vectors matrices are this featuriser's own (from_lake): one already in catalog order is
    # normalised in place instead of copied
    owns_vectors: bool = False

    def __post_init__(self) -> None:
        import pyarrow as pa

        p = self.products.drop_duplicates("product_id", keep="last").reset_index(drop=True)
        self.ids = p["product_id"].astype(str).to_numpy(dtype=object)
        self.pos = {pid: i for i, pid in enumerate(self.ids)}
        n = len(self.ids)
        titles = p["title"].fillna("").astype(str).tolist()
        # what the features read per candidate row; the catalog frame itself is not kept
        self.titles = pa.array(titles, pa.large_string())
        fields = list(TEXT_FIELDS if self.text_fields is None else self.text_fields)
        unknown = sorted(set(fields) - set(TEXT_FIELDS))
        if unknown:
            raise ValueError(f"rank.text_fields: unknown fields {unknown}; choose from {list(TEXT_FIELDS)}")
        self.text_fields = fields
        # one vocabulary for every text: the query's token ids are looked up once
        self.vocab_pos: dict[str, int] = {}
        title_toks = [tokenize(t) for t in titles]
        self.title_len = np.array([len(t) for t in title_toks], dtype=np.float32)
        self.title_rows = TokenRows.build(title_toks, self.vocab_pos)
        del title_toks
        # the fuzzy title match compares query words with the words of titles (ids 0 .. len - 1), not descriptions
        self.title_vocab = np.asarray(list(self.vocab_pos), dtype=object)
        fields_text_ = fields_text(p, fields).tolist()
        self.fields_rows = TokenRows.build((tokenize(t) for t in fields_text_), self.vocab_pos)
        self.has_fields = (self.fields_rows.lengths() > 0).astype(np.float32)
        self.field_match_rows: dict[str, TokenRows] = {}
        for f, col in FIELD_MATCH.items():
            if f in fields and f in p.columns:
                rows = TokenRows.build((tokenize(t) for t in fields_text(p, [f])), self.vocab_pos)
                if len(rows.ids):
                    self.field_match_rows[col] = rows
        self.match_fields = list(self.field_match_rows)

        def num(col: str) -> tuple[np.ndarray, np.ndarray]:
            if col not in p.columns:
                return np.zeros(n, np.float32), np.zeros(n, np.float32)
            v = pd.to_numeric(p[col], errors="coerce").to_numpy(dtype=np.float64)
            ok = np.isfinite(v)
            return np.where(ok, v, 0.0).astype(np.float32), ok.astype(np.float32)

        price, self.has_price = num("price")
        pop, self.has_pop = num("popularity")
        self.rating, self.has_rating = num("rating")
        self.log_price = np.log1p(np.maximum(price, 0.0)).astype(np.float32)
        self.log_pop = np.log1p(np.maximum(pop, 0.0)).astype(np.float32)

        # product vectors aligned with the catalog order (zeros + has_* = 0 where missing)
        text = self.product_vectors.get("text")
        if text is None or len(text[0]) == 0:
            raise ValueError("PairFeaturizer needs product text vectors (gold.product_embeddings, modality text)")
        self.dim = int(np.asarray(text[1]).shape[1])
        image = self.product_vectors.get("image")
        if image is not None and len(image[0]) and np.asarray(image[1]).shape[1] != self.dim:
            raise ValueError(f"image vectors have dim {np.asarray(image[1]).shape[1]} but text vectors {self.dim}: "
                             "image vectors must live in the text-embedding space")
        self.p_text, self.has_text = self._align(text)
        self.p_image, self.has_image = self._align(image)
        self.product_vectors = {}  # aligned copies above; the inputs are not kept (1.5 GB each at 1M x 384)
        self.q_pos: dict[str, int] = {}
        self.q_mat = np.zeros((0, self.dim), np.float32)
        if self.query_vectors is not None and len(self.query_vectors[0]):
            qids, qm = self.query_vectors
            self.q_mat = normalize(np.asarray(qm, np.float32))
            self.q_pos = {str(q): i for i, q in enumerate(qids)}
        # the product-text BM25 index: a given one (the candidate generator's, memory-mapped) read
        # through a permutation when its product order differs; else built here
        self._bm25_perm: np.ndarray | None = None
        if self.bm25 is not None and not np.array_equal(np.asarray(self.bm25.ids, dtype=object), self.ids):
            perm = np.array([self.bm25._pos.get(i, -1) for i in self.ids], dtype=np.int64)
            if (perm < 0).any():
                log.info("featurizer: the given BM25 index lacks %d catalog products; building one",
                         int((perm < 0).sum()))
                self.bm25 = None
            else:
                self._bm25_perm = perm
        if self.bm25 is None:
            self.bm25 = BM25Index(self.ids, product_text(p).tolist())
        self.bm25_title = BM25Index(self.ids, titles)
        self.bm25_fields = BM25Index(self.ids, fields_text_) if self.has_fields.any() else None
        del fields_text_, titles
        self.products = p[["product_id"]]
        # per-query whole-catalog BM25 rows (4 bytes per product each), oldest dropped first, bounded by
        # bytes: a count bound (4,096 queries) held 3.2 GB per process at 100k products, 32 GB at 1M
        self._bm25_cache: dict[str, np.ndarray] = {}
        self._field_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_rows = max(4, ROW_CACHE_BYTES // max(1, 4 * n))
        self._fuzzy_cache: dict[str, np.ndarray] = {}
        log.info("featurizer: %d products (%d with text vectors, %d with image vectors, %d with text fields %s), "
                 "%d query vectors, dim %d; token rows %.0f MB over %d words", n, int(self.has_text.sum()),
                 int(self.has_image.sum()), int(self.has_fields.sum()), fields, len(self.q_pos), self.dim,
                 (self.title_rows.nbytes() + self.fields_rows.nbytes()
                  + sum(r.nbytes() for r in self.field_match_rows.values())) / 2**20, len(self.vocab_pos))

    def active_features(self) -> list[str]:
        """The scalar features a model trained on this catalog uses (see :func:`active_features`)."""
        return active_features(bool(self.has_image.any()), bool(self.has_fields.any()),
                               match_features=self.match_features, match_fields=self.match_fields)

    def _align(self, pv: tuple[Sequence[str], np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.ids)
        has = np.zeros(n, np.float32)
        if pv is None or len(pv[0]) == 0:
            # a modality the catalog lacks (e.g. images): one read-only zero row seen n times, not an
            # n x dim matrix of zeros (1.5 GB per process at 1M products and 384 dims)
            return np.broadcast_to(np.zeros(self.dim, np.float32), (n, self.dim)), has
        ids, m = pv
        if (self.owns_vectors and len(ids) == n and isinstance(m, np.ndarray) and m.dtype == np.float32 and m.flags.c_contiguous
                and m.flags.writeable and m.shape == (n, self.dim)
                and np.array_equal(np.asarray(ids, dtype=object), self.ids)):
            mat = m  # already in catalog order (from_lake streams it so): normalised in place, no copy
            has[:] = 1.0
        else:
            mat = np.zeros((n, self.dim), np.float32)
            rows = np.array([self.pos.get(str(i), -1) for i in ids], dtype=np.int64)
            ok = rows >= 0
            mat[rows[ok]] = np.asarray(m, np.float32)[ok]
            has[rows[ok]] = 1.0
        for s in range(0, n, 65536):  # normalised in place, in blocks (no second n x dim copy)
            mat[s:s + 65536] = normalize(mat[s:s + 65536])
        return mat, has

    # ------------------------------------------------------------------------------ loading
    @staticmethod
    def vector_models(lake: "Lake", cfg: "Config", as_of: Any = None,
                      versions: dict[str, int] | None = None) -> tuple[str | None, str | None]:
        """The (text, image) embedding models :meth:`from_lake` picks, from the embeddings' id,
        modality and model columns only (no vectors, no catalog)."""
        emb = _read_as_of(lake, "gold.product_embeddings",
                          ["product_id", "modality", "model_name", "run_date", "embedded_at"], versions or {}, as_of)
        return _pick_model(emb, "text", cfg.rank.text_model_name), _pick_model(emb, "image", cfg.rank.image_model_name)

    @classmethod
    def from_lake(cls, lake: "Lake", cfg: "Config", as_of: Any = None,
                  query_encoder: Callable[[list[str]], np.ndarray] | None = None,
                  versions: dict[str, int] | None = None, bm25: BM25Index | None = None) -> "PairFeaturizer":
        """Catalog from ``silver.products``, vectors from ``gold.product_embeddings`` /
        ``gold.query_embeddings`` (only rows with ``run_date <= as_of`` when given); ``versions``
        pins table versions (time travel) for reproducible training. ``bm25``: an index over the same
        catalog's :func:`product_text` to use instead of building one (the score stage's saved one)."""
        versions = versions or {}

        def read(name: str, columns: list[str]) -> pd.DataFrame:
            return _read_as_of(lake, name, columns, versions, as_of)

        def stream(name: str, id_col: str, modality: str, model: str, pos: dict[str, int] | None = None):
            """(ids, matrix) of one modality and model, record batch by record batch
            (:func:`~mmpipeline.retrieval.embeddings.vector_blocks`). With ``pos`` (catalog id -> row)
            the rows are placed in catalog order as they stream (ids outside the catalog dropped; the
            last row of an id wins, as a scatter of the table would)."""
            ids_out: list[str] = []
            mats: list[np.ndarray] = []
            mat = has = None
            for ids, block in vector_blocks(lake, name, id_col, modality, model, versions.get(name), as_of):
                if pos is None:
                    ids_out += ids
                    mats.append(block.copy())
                    continue
                if mat is None:
                    mat, has = np.zeros((len(pos), block.shape[1]), np.float32), np.zeros(len(pos), bool)
                rows = np.array([pos.get(i, -1) for i in ids], dtype=np.int64)
                ok = rows >= 0
                mat[rows[ok]] = block[ok]
                has[rows[ok]] = True
            if pos is None:
                return ids_out, (np.concatenate(mats) if mats else np.zeros((0, 0), np.float32))
            if mat is None:
                return [], np.zeros((0, 0), np.float32)
            cat = np.asarray(list(pos), dtype=object)
            if has.all():  # every product has one: the matrix in catalog order, used in place (no copy)
                return cat, mat
            return cat[has].tolist(), mat[has]

        products = catalog_frame(lake, as_of, versions)
        text_model, image_model = cls.vector_models(lake, cfg, as_of, versions)
        # the catalog order the featuriser uses (see __post_init__): vectors are streamed into it
        cat_ids = products.drop_duplicates("product_id", keep="last")["product_id"].astype(str).tolist()
        pos = {pid: i for i, pid in enumerate(cat_ids)}
        pv: dict[str, tuple[Sequence[str], np.ndarray]] = {}
        for modality, model in (("text", text_model), ("image", image_model)):
            if model is not None:
                pv[modality] = stream("gold.product_embeddings", "product_id", modality, model, pos)
        del pos
        qv = None
        if lake.exists("gold.query_embeddings") and text_model is not None:
            qv = stream("gold.query_embeddings", "query_id", "text", text_model)
        meta = {"text_model": text_model, "image_model": image_model,
                "versions": {n: versions.get(n, lake.version(n)) for n in
                             ("silver.products", "gold.product_embeddings", "gold.query_embeddings")}}
        return cls(products, pv, qv, query_encoder, meta, bm25=bm25, text_fields=list(cfg.rank.text_fields),
                   match_features=cfg.rank.match_features, owns_vectors=True)

    # ------------------------------------------------------------------------------ lookups
    def product_rows(self, product_ids: Sequence[str]) -> np.ndarray:
        """Catalog row per product id (-1 for unknown products)."""
        return np.array([self.pos.get(str(p), -1) for p in product_ids], dtype=np.int64)

    def query_matrix(self, queries: Sequence[str], query_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, dim] normalised, has_vector [n]) for each query; the stored vector by id,
        else the encoder's vector when one is configured, else zeros."""
        n = len(queries)
        out = np.zeros((n, self.dim), np.float32)
        has = np.zeros(n, np.float32)
        missing = []
        for i, qid in enumerate(query_ids):
            j = self.q_pos.get(str(qid)) if qid is not None else None
            if j is not None:
                out[i] = self.q_mat[j]
                has[i] = 1.0
            else:
                missing.append(i)
        if missing and self.query_encoder is not None:
            texts = list(dict.fromkeys(queries[i] for i in missing))
            enc = normalize(np.asarray(self.query_encoder(texts), np.float32))
            by_text = dict(zip(texts, enc))
            for i in missing:
                out[i] = by_text[queries[i]]
                has[i] = 1.0
        return out, has

    def bm25_scores(self, query: str) -> np.ndarray:
        s = self._bm25_cache.get(query)
        if s is None:
            s = self.bm25.scores_all(query)
            if self._bm25_perm is not None:
                s = s[self._bm25_perm]
            _bounded_put(self._bm25_cache, query, s, self._cache_rows)
        return s

    def bm25_top(self, query: str, k: int) -> np.ndarray:
        """Product ids of the ``k`` best BM25 scores of ``query`` over the catalog, best first (ties by
        catalog row); only products the query matches (score > 0). Partitions the nonzero scores
        only: a top-k over every product (bm25s' retrieve) was 40% of build-training-data at 1M."""
        s = self.bm25_scores(query)
        nz = np.flatnonzero(s > 0)
        if len(nz) > k:
            v = s[nz]
            kth = -np.partition(-v, k - 1)[k - 1]  # the k-th best score; ties at it go by catalog row
            above = nz[v > kth]
            nz = np.concatenate([above, nz[v == kth][:k - len(above)]])
        return self.ids[nz[np.lexsort((nz, -s[nz]))]]

    def field_scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(BM25 over the titles, BM25 over the other text fields) of ``query`` against every product."""
        s = self._field_cache.get(query)
        if s is None:
            t = self.bm25_title.scores_all(query)
            f = self.bm25_fields.scores_all(query) if self.bm25_fields is not None else np.zeros(len(self.ids), np.float32)
            s = (t, f)
            _bounded_put(self._field_cache, query, s, max(2, self._cache_rows // 2))
        return s

    # ------------------------------------------------------------------------------ features
    def scalar_features(self, queries: Sequence[str], query_ids: Sequence[str], product_ids: Sequence[str],
                        qvec: np.ndarray | None = None, has_q: np.ndarray | None = None) -> pd.DataFrame:
        """The scalar feature columns for each pair (no vectors)."""
        queries = [q if isinstance(q, str) else "" for q in queries]
        rows = self.product_rows(product_ids)
        known = rows >= 0
        r = np.where(known, rows, 0)
        if qvec is None:
            qvec, has_q = self.query_matrix(queries, query_ids)
        kn = known.astype(np.float32)
        cos_text = np.einsum("ij,ij->i", qvec, self.p_text[r]) * kn
        cos_image = np.einsum("ij,ij->i", qvec, self.p_image[r]) * kn
        bm25 = np.zeros(len(queries), np.float32)
        bm25_rel = np.zeros(len(queries), np.float32)
        coverage = np.zeros(len(queries), np.float32)
        qtok = np.zeros(len(queries), np.float32)
        bm25_title = np.zeros(len(queries), np.float32)
        bm25_fields = np.zeros(len(queries), np.float32)
        f_coverage = np.zeros(len(queries), np.float32)
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_query.setdefault(q, []).append(i)
        for q, idx in by_query.items():
            s = self.bm25_scores(q)
            top = float(s.max()) if len(s) else 0.0
            idx_a = np.asarray(idx)
            sc = np.where(known[idx_a], s[r[idx_a]], 0.0)
            bm25[idx_a] = sc
            bm25_rel[idx_a] = sc / top if top > 0 else 0.0
            st, sf = self.field_scores(q)
            bm25_title[idx_a] = np.where(known[idx_a], st[r[idx_a]], 0.0)
            bm25_fields[idx_a] = np.where(known[idx_a], sf[r[idx_a]], 0.0)
            toks = set(tokenize(q))
            qtok[idx_a] = len(toks)
            if toks:
                qids = self.token_ids(toks)
                kn_a = known[idx_a]
                coverage[idx_a] = np.where(kn_a, self.title_rows.counts(r[idx_a], qids) / len(toks), 0.0)
                f_coverage[idx_a] = np.where(kn_a, self.fields_rows.counts(r[idx_a], qids) / len(toks), 0.0)
        match = self.match_scalars(queries, rows)
        return pd.DataFrame({
            **match,
            "cos_text": cos_text.astype(np.float32), "cos_image": cos_image.astype(np.float32),
            "bm25": bm25, "bm25_rel": bm25_rel, "title_coverage": coverage, "query_tokens": qtok,
            "title_tokens": self.title_len[r] * kn,
            "log_price": self.log_price[r] * kn, "log_popularity": self.log_pop[r] * kn,
            "rating": self.rating[r] * kn,
            "has_query_vec": has_q.astype(np.float32), "has_text": self.has_text[r] * kn,
            "has_image": self.has_image[r] * kn, "has_price": self.has_price[r] * kn,
            "has_popularity": self.has_pop[r] * kn, "has_rating": self.has_rating[r] * kn,
            "bm25_title": bm25_title, "bm25_fields": bm25_fields, "fields_coverage": f_coverage,
            "has_fields": self.has_fields[r] * kn,
            **image_features.for_featurizer(self, qvec, cos_image, r, kn),
        })[SCALAR_FEATURES]

    # ------------------------------------------------------------------------------ match features
    def token_ids(self, toks: Any) -> np.ndarray:
        """Sorted vocabulary ids of the tokens ``toks`` that occur in the catalog."""
        ids = np.fromiter((self.vocab_pos.get(t, -1) for t in toks), np.int64)
        return np.unique(ids[ids >= 0])

    def _fuzzy_words(self, words: Any) -> None:
        """Cache, per word, the title-vocabulary ids within rapidfuzz ratio >= 80 of it: one batched
        scan of the vocabulary for all words not cached yet (query words repeat across queries,
        batches and epochs; the scan was most of the cost of the match features)."""
        from rapidfuzz import fuzz, process

        todo = list(dict.fromkeys(w for w in words if len(w) >= 4 and not w.isdigit() and w not in self._fuzzy_cache))
        if not todo or not len(self.title_vocab):
            return
        sims = process.cdist(todo, self.title_vocab, scorer=fuzz.ratio, score_cutoff=80, workers=1)
        for w, row in zip(todo, sims):
            _bounded_put(self._fuzzy_cache, w, np.flatnonzero(row > 0), FUZZY_CACHE_WORDS)

    def _fuzzy_hits(self, toks: list[str]) -> np.ndarray:
        """[len(toks), len(vocab)] bool: catalog title words that match each query word -- exactly, or
        (words of 4+ letters) at rapidfuzz ratio >= 80 (typos, plural forms: fixures ~ fixtures)."""
        hits = np.zeros((len(toks), len(self.vocab_pos)), bool)
        if not len(self.title_vocab):
            return hits
        for i, t in enumerate(toks):
            j = self.vocab_pos.get(t)
            if j is not None:
                hits[i, j] = True
            if len(t) >= 4 and not t.isdigit():
                ids = self._fuzzy_cache.get(t)
                if ids is None:
                    self._fuzzy_words([t])
                    ids = self._fuzzy_cache[t]
                hits[i, ids] = True
        return hits

    def match_scalars(self, queries: Sequence[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """The ``MATCH_FEATURES`` columns for pairs (query text, catalog row; -1 = unknown product)."""
        from rapidfuzz import fuzz

        n = len(queries)
        out = {c: np.zeros(n, np.float32) for c in MATCH_FEATURES}
        if not self.match_features:
            return out
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            if rows[i] >= 0:
                by_query.setdefault(q, []).append(i)
        self._fuzzy_words(w for q in by_query for w in tokenize(q))  # one scan for the new words of all queries
        for q, idx in by_query.items():
            toks = list(dict.fromkeys(tokenize(q)))
            if not toks:
                continue
            idx_a = np.asarray(idx, dtype=np.int64)
            rr = rows[idx_a]
            qset, last, qline = set(toks), tokenize(q)[-1], " ".join(tokenize(q))
            qids = self.token_ids(qset)
            out["title_matches"][idx_a] = self.title_rows.counts(rr, qids)
            m = self.title_rows.any_hits(rr, self._fuzzy_hits(toks))  # [pairs, query words]
            out["title_fuzzy_coverage"][idx_a] = m.mean(axis=1)
            out["last_word_in_title"][idx_a] = m[:, toks.index(last)]
            titles = self.titles.take(pa_indices(rr)).to_pylist()
            lower = [" ".join(tokenize(t)) for t in titles]
            out["query_in_title"][idx_a] = [float(qline in t) for t in lower]
            out["title_set_ratio"][idx_a] = [fuzz.token_set_ratio(qline, t) / 100.0 for t in lower]
            qnums, qunits = numbers_and_units(q)
            if qnums:
                out["has_query_number"][idx_a] = 1.0
                for i, t in zip(idx, titles):
                    tnums, tunits = numbers_and_units(t)
                    out["number_coverage"][i] = len(qnums & tnums) / len(qnums)
                    out["unit_coverage"][i] = len(qunits & tunits) / len(qunits) if qunits else 0.0
            for col, field_rows in self.field_match_rows.items():
                out[col][idx_a] = field_rows.counts(rr, qids) / len(qset)
        return out

    def stored_scalars(self, df: pd.DataFrame) -> np.ndarray:
        """``SCALAR_FEATURES`` of training rows (``query_norm``, ``query_id``, ``product_id`` plus the
        stored feature columns): the stored columns as they are, the ones a stored table lacks
        (``FIELD_FEATURES`` of a table written before they existed) computed here."""
        missing = [c for c in SCALAR_FEATURES if c not in df.columns]
        if not missing:
            return df[SCALAR_FEATURES].to_numpy(dtype=np.float32)
        fresh = self.scalar_features(df["query_norm"].fillna("").tolist(), df["query_id"].tolist(),
                                     df["product_id"].tolist())
        out = fresh.copy()
        for c in SCALAR_FEATURES:
            if c in df.columns:
                out[c] = df[c].to_numpy(dtype=np.float32)
        return out[SCALAR_FEATURES].to_numpy(dtype=np.float32)

    def arrays(self, queries: Sequence[str], query_ids: Sequence[str], product_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The model input as arrays: {"q_text", "p_text", "p_image": [n, dim], "scalars": [n, S]}."""
        if not (len(queries) == len(query_ids) == len(product_ids)):
            raise ValueError("queries, query_ids and product_ids must have the same length")
        queries = [q if isinstance(q, str) else "" for q in queries]
        qvec, has_q = self.query_matrix(list(queries), list(query_ids))
        sc = self.scalar_features(queries, list(query_ids), list(product_ids), qvec, has_q)
        rows = self.product_rows(product_ids)
        known = (rows >= 0)[:, None]
        r = np.where(rows >= 0, rows, 0)
        return {"q_text": qvec, "p_text": np.where(known, self.p_text[r], 0.0).astype(np.float32),
                "p_image": np.where(known, self.p_image[r], 0.0).astype(np.float32),
                "scalars": sc.to_numpy(dtype=np.float32)}

    def transform(self, queries: Sequence[str], query_ids: Sequence[str], product_ids: Sequence[str]) -> pd.DataFrame:
        """The model input for these (query, product) pairs: ``FEATURE_COLUMNS``, one row per pair,
        in the given order. ``queries`` are normalised query texts; unknown products get zero features."""
        return arrays_to_frame(self.arrays(queries, query_ids, product_ids))


def pa_indices(rows: np.ndarray):
    import pyarrow as pa

    return pa.array(np.asarray(rows, dtype=np.int64))


def active_features(has_image: bool, has_fields: bool, field_features: bool = True, match_features: bool = False,
                    match_fields: Sequence[str] = ()) -> list[str]:
    """The scalar features a model uses on a catalog: without any product image the image columns
    are absent (the dataset lacks the modality: n/a, not a zero column), and the per-field text
    features only when some product has text besides its title (and ``field_features``); with
    ``match_features`` the title match columns and the coverage of each field in ``match_fields``."""
    drop: set[str] = set()
    if not has_image:
        drop.update(IMAGE_FEATURES)
    if not (has_fields and field_features):
        drop.update(FIELD_FEATURES)
    if not match_features:
        drop.update(MATCH_FEATURES)
    else:
        drop.update(c for c in FIELD_MATCH_FEATURES if c not in set(match_fields))
    return [c for c in SCALAR_FEATURES if c not in drop]


_NUMBER_UNIT = re.compile(
    r"(\d+(?:\.\d+)?(?:/\d+)?)\s*-?\s*(in\b|inch(?:es)?\b|\"|ft\b|foot\b|feet\b|'|gal(?:lon)?s?\b|lbs?\b|pounds?\b|"
    r"oz\b|ounces?\b|v\b|volts?\b|w\b|watts?\b|amps?\b|a\b|mm\b|cm\b|sq\b|qt\b|quarts?\b|btu\b|psi\b|cu\b|gpm\b)?",
    re.IGNORECASE)
_UNIT = {"inch": "in", "inches": "in", '"': "in", "foot": "ft", "feet": "ft", "'": "ft", "gal": "gal", "gallon": "gal",
         "gallons": "gal", "gals": "gal", "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb", "ounce": "oz",
         "ounces": "oz", "volt": "v", "volts": "v", "watt": "w", "watts": "w", "amp": "a", "amps": "a", "quart": "qt",
         "quarts": "qt"}


def numbers_and_units(text: str | None) -> tuple[set[str], set[str]]:
    """The numbers of a text (``3/4``, ``2.5``, ``10``; leading zeros and ``.0`` dropped) and its
    number + unit pairs with units normalised (``3/4 in.``, ``3/4-inch`` and ``3/4"`` -> ``3/4 in``)."""
    nums, units = set(), set()
    for num, unit in _NUMBER_UNIT.findall((text or "").lower()):
        if "." in num and "/" not in num:
            num = num.rstrip("0").rstrip(".") or "0"
        num = num.lstrip("0") or "0"
        nums.add(num)
        if unit:
            units.add(f"{num} {_UNIT.get(unit, unit)}")
    return nums, units


def _attribute_values(a: Any) -> str:
    if a is None or (isinstance(a, float) and np.isnan(a)):
        return ""
    items = a.items() if isinstance(a, dict) else a
    vals = []
    for kv in items:
        v = kv[1] if isinstance(kv, (tuple, list)) and len(kv) == 2 else kv
        v = "" if v is None else str(v).strip()
        if v and v.lower() not in ("na", "n/a", "none", "null", "nan"):
            vals.append(v)
    return " ".join(vals)


def fields_text(products: pd.DataFrame, fields: Sequence[str]) -> pd.Series:
    """Per product, the text of ``fields`` (besides the title): brand, category path, description and
    the attribute values, where present, joined by spaces."""
    parts = []
    for f in fields:
        if f not in products.columns:
            continue
        if f == "attributes":
            parts.append(products[f].map(_attribute_values))
        else:
            parts.append(products[f].fillna("").astype(str))
    if not parts:
        return pd.Series([""] * len(products), index=products.index, dtype=object)
    text = parts[0]
    for x in parts[1:]:
        text = text + " " + x
    return text.str.strip()


def arrays_to_frame(a: dict[str, np.ndarray]) -> pd.DataFrame:
    out = pd.DataFrame({c: list(a[c]) for c in VECTOR_FEATURES})
    sc = pd.DataFrame(a["scalars"], columns=SCALAR_FEATURES)
    return pd.concat([out, sc], axis=1)[FEATURE_COLUMNS]


def frame_to_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Model-input DataFrame -> {"q_text", "p_text", "p_image": [n, dim], "scalars": [n, S]} float32."""
    missing = [c for c in VECTOR_FEATURES + STORED_FEATURES if c not in df.columns]
    if missing:
        raise ValueError(f"model input lacks feature columns {missing}")
    out = {c: np.stack([np.asarray(v, np.float32) for v in df[c].to_numpy()]) if len(df) else np.zeros((0, 0), np.float32)
           for c in VECTOR_FEATURES}
    # a frame made for a model registered before the per-field features (its signature drops them):
    # zeros, which that model never reads (a model selects its own columns by name)
    out["scalars"] = df.reindex(columns=SCALAR_FEATURES, fill_value=0.0).to_numpy(dtype=np.float32)
    return out
