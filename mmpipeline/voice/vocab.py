"""Catalog-aware recognition: the shop's vocabulary, a decoding prompt built from it, and the
correction of low-confidence transcripts.

* :class:`Vocabulary` -- frequent queries (``silver.queries``: normalised text and frequency), brands
  (``silver.products.brand``, else the first word of titles, which is the brand in most retail
  titles) and catalog words (title tokens);
* :meth:`Vocabulary.prompt` / :meth:`Vocabulary.hotwords` -- text for faster-whisper's
  ``initial_prompt`` / ``hotwords`` (both become the decoder's previous-context tokens), so Whisper
  spells brand and product words the shop's way;
* :class:`Corrector` -- for a transcript whose average log-probability is below a threshold:
  (1) snap to the nearest logged query when the character-n-gram TF-IDF cosine is high enough;
  otherwise (2) replace each out-of-vocabulary word by its nearest catalog/query word. Matching uses
  scikit-learn's ``TfidfVectorizer(analyzer="char_wb")`` (no rapidfuzz in the lock).

``exclude`` (a set of normalised queries) holds queries out of the log and of the word counts, so a
benchmark can measure the correction without the clip's own query in the log (see
:mod:`mmpipeline.bench.voice`).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from mmpipeline.clean.text import normalize_query

_WORD = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")


def norm(text: str | None) -> str:
    return normalize_query(text) or ""


def words(text: str) -> list[str]:
    return _WORD.findall(text)


@dataclass
class Vocabulary:
    queries: dict[str, int]  # normalised query -> frequency
    brands: list[str]  # most frequent first
    title_words: Counter = field(default_factory=Counter)

    @classmethod
    def build(cls, queries: Iterable[tuple[str, int]], titles: Iterable[str] = (),
              brands: Iterable[str | None] = ()) -> "Vocabulary":
        q: dict[str, int] = {}
        for text, f in queries:
            n = norm(text)
            if n:
                q[n] = q.get(n, 0) + int(f or 1)
        tw: Counter = Counter()
        firsts: Counter = Counter()
        for t in titles:
            n = norm(t)
            if not n:
                continue
            ws = words(n)
            tw.update(ws)
            if ws and len(ws[0]) > 2:
                firsts[ws[0]] += 1
        bc = Counter(n for n in (norm(b) for b in brands) if n)
        brand_list = [b for b, _ in (bc or firsts).most_common()]
        return cls(q, brand_list, tw)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.queries):
            h.update(f"{k}\t{self.queries[k]}\n".encode())
        h.update("|".join(self.brands[:500]).encode())
        return h.hexdigest()[:12]

    def top_queries(self, n: int, exclude: set[str] | None = None) -> list[str]:
        ranked = sorted(self.queries.items(), key=lambda kv: (-kv[1], kv[0]))
        return [q for q, _ in ranked if not exclude or q not in exclude][:n]

    def prompt(self, n_queries: int = 40, n_brands: int = 40, max_chars: int = 600,
               exclude: set[str] | None = None) -> str:
        """Text for ``initial_prompt``: frequent queries and brands, lower case, comma separated (the
        style of a search box: Whisper then writes lower case without a final period)."""
        items = self.top_queries(n_queries, exclude) + [b for b in self.brands[:n_brands]]
        seen, out, size = set(), [], 0
        for it in items:
            if it in seen:
                continue
            if size + len(it) + 2 > max_chars:
                break
            seen.add(it)
            out.append(it)
            size += len(it) + 2
        return ", ".join(out)

    def hotwords(self, n_brands: int = 60, max_chars: int = 400) -> str:
        out, size = [], 0
        for b in self.brands[:n_brands]:
            if size + len(b) + 1 > max_chars:
                break
            out.append(b)
            size += len(b) + 1
        return " ".join(out)


@dataclass
class Correction:
    text: str
    method: str  # none | query | words
    similarity: float | None = None


class Corrector:
    """Correct low-confidence transcripts against the query log and the catalog vocabulary."""

    def __init__(self, vocab: Vocabulary, min_query_similarity: float = 0.6, min_word_similarity: float = 0.55,
                 min_word_count: int = 2):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vocab = vocab
        self.min_q = float(min_query_similarity)
        self.min_w = float(min_word_similarity)
        self.queries = sorted(vocab.queries)
        self.q_index = {q: i for i, q in enumerate(self.queries)}
        self.q_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        self.q_mat = self.q_vec.fit_transform(self.queries) if self.queries else None
        # word vocabulary: title words seen min_word_count times, plus query words (counted per query)
        self.q_word_counts: Counter = Counter()
        for q in self.queries:
            self.q_word_counts.update(set(words(q)))
        self.title_words = {w for w, c in vocab.title_words.items() if c >= min_word_count and len(w) > 1}
        self.word_list = sorted(self.title_words | set(self.q_word_counts))
        self.w_index = {w: i for i, w in enumerate(self.word_list)}
        self.w_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), sublinear_tf=True)
        self.w_mat = self.w_vec.fit_transform(self.word_list) if self.word_list else None

    def _known_words(self, exclude: set[str] | None) -> tuple[set[str], np.ndarray | None]:
        if not exclude:
            return set(self.word_list), None
        held = Counter()
        for q in exclude:
            if q in self.q_index:
                held.update(set(words(q)))
        gone = {w for w, c in held.items() if self.q_word_counts.get(w, 0) - c <= 0 and w not in self.title_words}
        mask = np.array([w in gone for w in self.word_list]) if gone else None
        return set(self.word_list) - gone, mask

    def correct(self, text: str, exclude: set[str] | None = None) -> Correction:
        """``text``: a normalised transcript. ``exclude``: normalised queries to hold out."""
        if not text:
            return Correction(text, "none")
        if self.q_mat is not None:
            sims = (self.q_mat @ self.q_vec.transform([text]).T).toarray().ravel()
            if exclude:
                for q in exclude:
                    i = self.q_index.get(q)
                    if i is not None:
                        sims[i] = -1.0
            j = int(np.argmax(sims))
            if sims[j] >= self.min_q:
                return Correction(self.queries[j], "query", float(sims[j]))
        if self.w_mat is None:
            return Correction(text, "none")
        known, mask = self._known_words(exclude)
        toks = text.split(" ")
        changed = False
        out = []
        for t in toks:
            if not _WORD.fullmatch(t) or t in known or len(t) < 3:
                out.append(t)
                continue
            s = (self.w_mat @ self.w_vec.transform([t]).T).toarray().ravel()
            if mask is not None:
                s[mask] = -1.0
            j = int(np.argmax(s))
            if s[j] >= self.min_w:
                out.append(self.word_list[j])
                changed = True
            else:
                out.append(t)
        return Correction(" ".join(out), "words" if changed else "none")


def correct_all(corrector: Corrector | None, texts: Sequence[str], logprobs: Sequence[float | None],
                below_logprob: float, holdout: Sequence[set[str] | None] | None = None) -> list[Correction]:
    """Correct the transcripts whose average log-probability is below ``below_logprob``."""
    out = []
    for i, (t, lp) in enumerate(zip(texts, logprobs)):
        if corrector is None or lp is None or lp >= below_logprob:
            out.append(Correction(t, "none"))
        else:
            out.append(corrector.correct(t, holdout[i] if holdout is not None else None))
    return out
