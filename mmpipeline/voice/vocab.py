"""Catalog-aware recognition: the shop's vocabulary, a decoding prompt built from it, the choice
among Whisper's n-best hypotheses, and the correction of transcripts.

* :class:`Vocabulary` -- frequent queries (``silver.queries``: normalised text and frequency), brands
  (``silver.products.brand``, else the first word of titles, which is the brand in most retail
  titles) and catalog words (title tokens);
* :meth:`Vocabulary.prompt` / :meth:`Vocabulary.hotwords` -- text for faster-whisper's
  ``initial_prompt`` / ``hotwords`` (both become the decoder's previous-context tokens); measured
  worse with tiny.en, so off by default (``voice.prompt``);
* :func:`rescore` -- per clip, the n-best hypothesis with the best avg log-prob + weight x share of
  words the vocabulary knows (``voice.rescore_weight``);
* :class:`Corrector` -- query snap of transcripts to the nearest logged query (candidates by
  character-n-gram TF-IDF cosine of the words and of their Metaphone keys, scikit-learn; scored by
  spelling and sound, rapidfuzz) and word correction of unknown words by spelling
  and sound: rapidfuzz's normalised Indel similarity of the words and of their Metaphone keys
  (jellyfish, :func:`phonetic_key`), computed against the whole word list at once (``process.cdist``).

The word vocabulary counts a word when two titles or two logged queries contain it, so one
customer's typo is not a target. ``exclude`` (a set of normalised queries) holds queries out of the
log and of the word counts, so a benchmark can measure without the clip's own query in the log (see
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
_ALPHA = re.compile(r"[a-z]{2,}")


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


def phonetic_key(word: str) -> str:
    """The word's Metaphone key (jellyfish), lower case: words that sound alike share it or differ by
    an edit (``sheathing``/``cheating``, ``stufurhome``/``stu for home`` joined)."""
    import jellyfish

    w = re.sub(r"[^a-z]", "", word.lower())
    return jellyfish.metaphone(w).lower() if w else ""


def phonetic_phrase(text: str) -> str:
    """The Metaphone keys of the words of ``text``, space-separated (numbers kept as they are)."""
    return " ".join(phonetic_key(w) or w for w in text.split())


class Corrector:
    """Correct transcripts against the query log and the catalog vocabulary.

    Two steps: (1) *query snap* -- a transcript becomes the nearest logged query (:meth:`nearest_query`:
    spelling and sound) when that is at least ``min_query_similarity`` close and the transcript has low
    confidence, or at least ``snap_above`` close whatever its confidence (:func:`correct_all`);
    (2) *word correction* -- each word the vocabulary does not know, and each run of 2-3 words whose
    concatenation is a known word (``stu for home`` -> ``stufurhome``), is replaced by the known word
    that is closest in spelling and sound (mean of rapidfuzz's ``fuzz.ratio`` of the words and of their
    Metaphone keys, against every known word), when that score is at least ``min_word_similarity``.
    The vocabulary: catalog title words seen ``min_word_count`` times and words of logged queries;
    ``exclude`` holds queries (and the words only they contain) out.
    """

    def __init__(self, vocab: Vocabulary, min_query_similarity: float = 0.6, min_word_similarity: float = 0.6,
                 min_word_count: int = 2):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vocab = vocab
        self.min_q = float(min_query_similarity)
        self.min_w = float(min_word_similarity)
        self.queries = sorted(vocab.queries)
        self.q_index = {q: i for i, q in enumerate(self.queries)}
        self.q_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        self.q_mat = self.q_vec.fit_transform(self.queries) if self.queries else None
        self.snap_candidates = 200
        self.q_keys = [phonetic_phrase(q) for q in self.queries]
        self.k_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        self.k_mat = self.k_vec.fit_transform(self.q_keys) if any(self.q_keys) else None
        # word vocabulary: title words seen min_word_count times, plus words of at least min_word_count
        # logged queries (one query's typo is not a word); plain letters only (no hyphen/apostrophe forms)
        self.min_count = int(min_word_count)
        self.q_word_counts: Counter = Counter()
        for q in self.queries:
            self.q_word_counts.update(set(words(q)))
        self.title_words = {w for w, c in vocab.title_words.items() if c >= min_word_count and _ALPHA.fullmatch(w)}
        self.word_list = sorted(self.title_words | {w for w, c in self.q_word_counts.items()
                                                    if c >= min_word_count and _ALPHA.fullmatch(w)})
        self.w_index = {w: i for i, w in enumerate(self.word_list)}
        self.w_keys = [phonetic_key(w) for w in self.word_list]
        self.w_freq = np.array([vocab.title_words.get(w, 0) + self.q_word_counts.get(w, 0) for w in self.word_list],
                               float)
        self.w_len = np.array([len(w) for w in self.word_list], int)

    def with_similarities(self, min_query_similarity: float, min_word_similarity: float) -> "Corrector":
        """The same corrector (vocabulary, indexes: shared, not rebuilt) with other thresholds."""
        import copy

        c = copy.copy(self)
        c.min_q, c.min_w = float(min_query_similarity), float(min_word_similarity)
        return c

    def _known_words(self, exclude: set[str] | None) -> tuple[set[str], np.ndarray | None]:
        if not exclude:
            return set(self.word_list), None
        held = Counter()
        for q in exclude:
            if q in self.q_index:
                held.update(set(words(q)))
        gone = {w for w, c in held.items()
                if self.q_word_counts.get(w, 0) - c < self.min_count and w not in self.title_words}
        mask = np.array([w in gone for w in self.word_list]) if gone else None
        return set(self.word_list) - gone, mask

    def coverage(self, text: str, exclude: set[str] | None = None) -> float:
        """Share of the words of ``text`` (3+ letters) the vocabulary knows (1.0 for none)."""
        ws = [w for w in re.findall(r"[a-z]+", text) if len(w) > 2]
        if not ws:
            return 1.0
        gone: set[str] = set()
        if exclude:
            held: Counter = Counter()
            for q in exclude:
                if q in self.q_index:
                    held.update(set(words(q)))
            gone = {w for w, c in held.items()
                    if self.q_word_counts.get(w, 0) - c < self.min_count and w not in self.title_words}
        return sum(w in self.w_index and w not in gone for w in ws) / len(ws)

    def snap(self, text: str, exclude: set[str] | None = None) -> Correction | None:
        """The nearest logged query (:meth:`nearest_query`) when its similarity is at least
        ``min_query_similarity``, else None."""
        best = self.nearest_query(text, exclude)
        return best if best is not None and best.similarity >= self.min_q else None

    def nearest_query(self, text: str, exclude: set[str] | None = None) -> Correction | None:
        """The logged query closest to ``text`` in spelling and sound, with its similarity (0-1).

        Candidates: the ``snap_candidates`` queries nearest by character-n-gram TF-IDF cosine of the
        words and of their Metaphone keys (sparse products, so the cost grows with the candidates,
        not with a full string comparison against the whole log); each scored by the mean of
        rapidfuzz's ``fuzz.ratio`` of the texts and of their Metaphone keys. Sound matters for
        speech: ``single wall storm pipe`` is closer to the logged ``singel wall stove pipe`` by key
        than by letters."""
        from rapidfuzz import fuzz

        if not text or self.q_mat is None:
            return None
        key = phonetic_phrase(text)
        cand = self._tfidf_candidates([text], [key], self.snap_candidates)
        if exclude:
            cand -= {self.q_index[q] for q in exclude if q in self.q_index}
        if not cand:
            return None
        scored = [((fuzz.ratio(text, self.queries[i]) + fuzz.ratio(key, self.q_keys[i])) / 200.0, -i)
                  for i in cand]
        sc, neg = max(scored)
        return Correction(self.queries[-neg], "query", float(sc))

    def _tfidf_candidates(self, texts: Sequence[str], keys: Sequence[str], per_text: int) -> set[int]:
        """Indexes of the logged queries among the ``per_text`` nearest of each text (character-n-gram
        TF-IDF cosine of the words) and of each Metaphone key phrase (the same on the keys)."""
        cand: set[int] = set()
        for mat, vec, qs in ((self.q_mat, self.q_vec, texts), (self.k_mat, self.k_vec, keys)):
            if mat is None:
                continue
            sims = (vec.transform(qs) @ mat.T).toarray()
            n = min(per_text, sims.shape[1])
            for row in sims:
                cand.update(int(i) for i in np.argpartition(-row, n - 1)[:n] if row[i] > 0)
        return cand

    def query_candidates(self, nbest: Sequence[tuple[str, float]], k: int = 5, exclude: set[str] | None = None,
                         per_text: int = 30) -> list[tuple[str, float]]:
        """The ``k`` logged queries closest to a clip's whole n-best list: each hypothesis (written form)
        proposes its ``per_text`` nearest queries by character-n-gram TF-IDF of the words and of their
        Metaphone keys; a candidate's similarity is the mean over the hypotheses, weighted by their
        posterior (softmax of avg log-prob), of the spelling-and-sound score of :meth:`nearest_query`.
        A query several hypotheses point at beats one a single hypothesis happens to resemble.
        Returns [(query, similarity)], best first."""
        from rapidfuzz import fuzz, process

        from mmpipeline.voice.textnorm import written_form

        if self.q_mat is None or k <= 0:
            return []
        hyps: dict[str, float] = {}
        for t, lp in nbest:
            wt = written_form(t)
            if wt and (wt not in hyps or lp > hyps[wt]):
                hyps[wt] = float(lp)
        if not hyps:
            return []
        texts = list(hyps)
        keys = [phonetic_phrase(t) for t in texts]
        cand = self._tfidf_candidates(texts, keys, per_text)
        if exclude:
            cand -= {self.q_index[q] for q in exclude if q in self.q_index}
        if not cand:
            return []
        idx = sorted(cand)
        spell = process.cdist(texts, [self.queries[i] for i in idx], scorer=fuzz.ratio, dtype=np.float32)
        sound = process.cdist(keys, [self.q_keys[i] for i in idx], scorer=fuzz.ratio, dtype=np.float32)
        lps = np.array([hyps[t] for t in texts])
        w = np.exp(lps - lps.max())
        sim = (w / w.sum()) @ ((spell + sound) / 200.0)
        order = np.lexsort((np.array(idx), -sim))[:k]  # ties: the earlier query in sort order
        return [(self.queries[idx[j]], float(sim[j])) for j in order]

    def best_word(self, text: str, mask: np.ndarray | None = None) -> tuple[str | None, float]:
        """The known word closest to ``text`` (a word, or words joined) in spelling and sound: the mean
        of rapidfuzz ``fuzz.ratio`` of the words and of their Metaphone keys (0-1), plus a small
        frequency prior; words of very different length are not candidates."""
        from rapidfuzz import fuzz, process

        if not self.word_list or not text:
            return None, 0.0
        key = phonetic_key(text)
        spell = process.cdist([text], self.word_list, scorer=fuzz.ratio, dtype=np.float32)[0]
        sound = process.cdist([key], self.w_keys, scorer=fuzz.ratio, dtype=np.float32)[0] if key else 0.0
        s = (0.5 * spell + 0.5 * sound) / 100.0 + 0.01 * np.log1p(self.w_freq)
        bad = (self.w_len < 3) | (np.abs(self.w_len - len(text)) > max(2, len(text) // 3))
        if mask is not None:
            bad |= mask
        s = np.where(bad, -1.0, s)
        j = int(np.argmax(s))
        return (self.word_list[j], float(s[j])) if s[j] > 0 else (None, 0.0)

    def correct_words(self, text: str, exclude: set[str] | None = None) -> Correction:
        known_set, mask = self._known_words(exclude)

        def known(x: str) -> bool:  # hyphenated / with apostrophe: known when its parts are
            return x in known_set or all(p in known_set or len(p) < 3 for p in re.split(r"['-]", x) if p)

        toks = text.split(" ")
        out: list[str] = []
        changed = False
        i = 0
        while i < len(toks):
            t = toks[i]
            # an unknown word starting a run of 2-3 words that is one known word when joined, closer than
            # the word alone is to any: "stu for home" -> "stufurhome"
            done = False
            if _ALPHA.fullmatch(t) and not known(t):
                alone = self.best_word(t, mask)
                for n in (3, 2):
                    span = toks[i:i + n]
                    if len(span) < n or not all(_ALPHA.fullmatch(x) for x in span):
                        continue
                    joined = "".join(span)
                    w, sc = self.best_word(joined, mask)
                    if w is None or sc < max(self.min_w, alone[1]):
                        continue
                    out.append(w)
                    i += n
                    changed = done = True
                    break
            if done:
                continue
            if not _ALPHA.fullmatch(t) or known(t) or len(t) < 3:
                out.append(t)
            else:
                w, sc = self.best_word(t, mask)
                if w is not None and sc >= self.min_w:
                    out.append(w)
                    changed = True
                else:
                    out.append(t)
            i += 1
        return Correction(" ".join(out), "words" if changed else "none")

    def correct(self, text: str, exclude: set[str] | None = None, snap: bool = True) -> Correction:
        """``text``: a normalised transcript. ``exclude``: normalised queries to hold out.
        ``snap``: try the query snap first (low-confidence transcripts)."""
        if not text:
            return Correction(text, "none")
        if snap:
            c = self.snap(text, exclude)
            if c is not None:
                return c
        return self.correct_words(text, exclude)


def correct_all(corrector: Corrector | None, texts: Sequence[str], logprobs: Sequence[float | None],
                below_logprob: float, holdout: Sequence[set[str] | None] | None = None,
                words: str = "low_confidence", snap_above: float | None = None) -> list[Correction]:
    """Correct transcripts: one whose average log-probability is below ``below_logprob`` is snapped to
    the nearest logged query when that is at least ``min_query_similarity`` close, and any transcript
    when it is at least ``snap_above`` close (None: low-confidence ones only); word correction
    (``words``: off | low_confidence | always) for the others."""
    out = []
    for i, (t, lp) in enumerate(zip(texts, logprobs)):
        excl = holdout[i] if holdout is not None else None
        low = lp is not None and lp < below_logprob
        c = None
        if corrector is not None and (low or snap_above is not None):
            near = corrector.nearest_query(t, excl)
            if near is not None and near.similarity >= (corrector.min_q if low else max(corrector.min_q, snap_above)):
                c = near
        if c is None and corrector is not None and t and (words == "always" or (words == "low_confidence" and low)):
            c = corrector.correct_words(t, excl)
        out.append(c or Correction(t, "none"))
    return out


def rescore(recs: Sequence, corrector: Corrector | None, weight: float,
            holdout: Sequence[set[str] | None] | None = None) -> list:
    """Choose, per clip, the n-best hypothesis with the best ``avg log-prob + weight x vocabulary
    coverage`` (the share of its words the catalog / query log knows): Whisper's runner-up often
    spells the shop's word (``bamboo palm`` over ``bambi palm``). Returns copies of the recognitions
    with ``text``/``avg_logprob`` of the chosen hypothesis (unchanged without an n-best list)."""
    from dataclasses import replace

    from mmpipeline.voice.textnorm import written_form

    if corrector is None or weight <= 0:
        return list(recs)
    out = []
    for i, r in enumerate(recs):
        hyps = getattr(r, "nbest", None) or []
        if len(hyps) < 2:
            out.append(r)
            continue
        excl = holdout[i] if holdout is not None else None
        scored = [(lp + weight * corrector.coverage(written_form(t), excl), j) for j, (t, lp) in enumerate(hyps)]
        j = max(scored)[1]
        out.append(replace(r, text=hyps[j][0], avg_logprob=hyps[j][1]))
    return out


def verify_queries(recs: Sequence, margin: float, min_similarity: float,
                   holdout: Sequence[set[str] | None] | None = None, k: int | None = None) -> list:
    """Catalog-aware recognition with the audio as judge: per clip, among the logged queries checked
    against its audio (``Recognition.checked``: similarity to the n-best list, forced avg log-prob; see
    :meth:`mmpipeline.voice.asr.Recognizer.score_texts`), the one the model scores best becomes the
    recognised text when its similarity is at least ``min_similarity`` and its forced log-prob is within
    ``margin`` of the recognised text's (``forced_text``, scored the same way): a prior for what shoppers
    actually search, which the audio must still support. A query that only looks like the
    transcript (``easy grip tile`` for ``early grip gloves``) scores far below (several nats per
    token). ``holdout``: queries per clip that may not be chosen (benchmarks); ``k``: only the ``k``
    most similar of the rest count (a benchmark checks the nearest with and without the held-out
    query; this keeps each scope to what the stage would have checked). Returns copies of the
    recognitions (``text`` = the query, ``avg_logprob`` = its forced score) where a query was taken."""
    from dataclasses import replace

    out = []
    for i, r in enumerate(recs):
        checked = getattr(r, "checked", None) or {}
        ref = getattr(r, "forced_text", None)
        excl = holdout[i] if holdout is not None else None
        best = None
        if ref is not None:
            allowed = sorted(((sim, q) for q, (sim, _) in checked.items() if not (excl and q in excl)),
                             key=lambda x: (-x[0], x[1]))
            for sim, q in (allowed[:k] if k is not None else allowed):
                forced = checked[q][1]
                if sim < min_similarity or forced < ref - margin:
                    continue
                if best is None or (forced, q) > best:
                    best = (forced, q)
        out.append(replace(r, text=best[1], avg_logprob=best[0]) if best is not None else r)
    return out
