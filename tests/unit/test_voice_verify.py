"""Logged queries checked against the audio: the candidates the n-best list points at, the rule that takes
one (similar enough, and scored by Whisper itself about as well as its own best hypothesis), and the
forced score on real clips (a query the speaker said scores near Whisper's hypothesis, an unrelated
one far below)."""

from __future__ import annotations

import numpy as np
import pytest

from mmpipeline.voice.asr import Recognition
from mmpipeline.voice.vocab import Corrector, Vocabulary, verify_queries


def _corrector() -> Corrector:
    queries = [("gorilla grip gloves", 3), ("easy grip tile", 2), ("garden hose", 9), ("grip tape", 1),
               ("chadwick pendant", 1), ("fabric shower curtain", 2)]
    return Corrector(Vocabulary.build(queries, ["Gorilla Grip gloves large", "Easy Grip tile spacer"]))


def test_candidates_are_the_queries_the_whole_nbest_list_points_at():
    c = _corrector()
    nbest = [("Early grip clubs.", -0.56), ("really great clubs.", -0.61), ("early grip gloves.", -0.83)]
    cands = c.query_candidates(nbest, k=3)
    assert cands[0][0] == "gorilla grip gloves" and len(cands) == 3
    assert [s for _, s in cands] == sorted((s for _, s in cands), reverse=True)
    assert 0.6 < cands[0][1] < 1.0
    # a held-out query is never a candidate; the next ones move up
    held = c.query_candidates(nbest, k=3, exclude={"gorilla grip gloves"})
    assert "gorilla grip gloves" not in dict(held) and len(held) == 3
    assert c.query_candidates([], k=3) == [] and c.query_candidates(nbest, k=0) == []


def _rec(checked, forced_text=-0.6):
    return Recognition("early grip clubs.", -0.56, 0.01, [("early grip clubs.", -0.56)], checked=checked,
                       forced_text=forced_text)


def test_a_query_is_taken_only_when_similar_and_the_audio_supports_it():
    r = _rec({"gorilla grip gloves": (0.75, -1.2), "easy grip tile": (0.78, -4.0)})
    out = verify_queries([r], margin=1.5, min_similarity=0.7)[0]
    assert (out.text, out.avg_logprob) == ("gorilla grip gloves", -1.2)
    assert out.nbest == r.nbest and out.no_speech_prob == r.no_speech_prob
    # the audio does not support it closely enough: Whisper's text stays
    assert verify_queries([r], margin=0.5, min_similarity=0.7)[0].text == "early grip clubs."
    # not similar enough to the n-best list
    assert verify_queries([r], margin=1.5, min_similarity=0.8)[0].text == "early grip clubs."
    # held out: the other candidate is far below the hypothesis, so nothing is taken
    assert verify_queries([r], 1.5, 0.7, holdout=[{"gorilla grip gloves"}])[0].text == "early grip clubs."
    # of two supported queries the better-scored one wins
    two = _rec({"gorilla grip gloves": (0.75, -1.2), "grip tape": (0.71, -0.9)})
    assert verify_queries([two], 1.5, 0.7)[0].text == "grip tape"
    # k: only the k most similar checked queries (after the hold-out) count, as the stage would check
    three = _rec({"gorilla grip gloves": (0.9, -3.0), "grip tape": (0.8, -0.9), "easy grip tile": (0.75, -1.0)})
    assert verify_queries([three], 1.5, 0.7, k=1)[0].text == "early grip clubs."  # the nearest is not supported
    assert verify_queries([three], 1.5, 0.7, k=2)[0].text == "grip tape"
    assert verify_queries([three], 1.5, 0.7, holdout=[{"gorilla grip gloves"}], k=1)[0].text == "grip tape"
    # nothing checked (a stored transcript, verification off): unchanged
    plain = Recognition("garden hose", -0.2, 0.0)
    assert verify_queries([plain], 1.5, 0.7)[0] is plain


@pytest.fixture(scope="module")
def whisper():
    pytest.importorskip("faster_whisper")
    from mmpipeline.voice.asr import Recognizer

    return Recognizer(None, device="cpu", compute_type="int8", batch_size=4, beam_size=5, nbest=5)


def test_the_model_scores_the_said_query_near_its_hypothesis_and_others_far_below(whisper, shared_datasets):
    from mmpipeline.voice.audio import decode_file, preprocess
    from mmpipeline.voice.stage import query_verifier
    from mmpipeline.config import VoiceConfig

    # a neural-voice clip Whisper tiny.en mishears as "fabric pendant", and a second one
    root = shared_datasets / "voice" / "audio"
    waves = [preprocess(decode_file(str(root / f))) for f in ("v21d8224c57.wav", "va8f1128fdf.wav")]
    calls = []

    def verify(recs, start):
        calls.append((len(recs), start))
        return [[("chadwick pendant", 0.8), ("garden hose", 0.5)], [("gorilla grip gloves", 0.7)]]

    out = whisper.transcribe(waves, verify=verify)
    assert calls == [(2, 0)]
    a, b = out
    assert "chadwick" not in a.text.lower()  # Whisper's own best hypothesis misses the brand
    assert a.forced_text is not None and a.forced_text >= a.avg_logprob - 0.5
    said, other = a.checked["chadwick pendant"][1], a.checked["garden hose"][1]
    assert said > a.forced_text - 1.5 > other + 2.0, (said, other, a.forced_text)
    assert a.checked["chadwick pendant"][0] == 0.8 and set(b.checked) == {"gorilla grip gloves"}
    assert verify_queries(out, 1.5, 0.7)[0].text == "chadwick pendant"
    # the same through the stage's verifier (candidates from the vocabulary); off: nothing is checked
    c = Corrector(Vocabulary.build([("chadwick pendant", 1), ("fabric shower curtain", 1), ("garden hose", 4)]))
    v = VoiceConfig(verify_queries=2)
    again = whisper.transcribe(waves[:1], verify=query_verifier(c, v))[0]
    assert set(again.checked) <= {"chadwick pendant", "fabric shower curtain", "garden hose"}
    assert "chadwick pendant" in again.checked
    assert "garden hose" not in again.checked  # below verify_min_similarity: not worth a decoder pass
    strict = whisper.transcribe(waves[:1], verify=query_verifier(c, VoiceConfig(verify_min_similarity=0.99)))[0]
    assert strict.checked == {} and strict.forced_text is None
    assert query_verifier(c, VoiceConfig(verify_queries=0)) is None
    assert whisper.transcribe(waves[:1])[0].checked == {}
    assert np.isfinite(said)


class _Member:
    """A stand-in recogniser with fixed hypotheses and fixed forced scores per query."""

    def __init__(self, name, recs, forced, forced_hyp):
        self.path, self.version, self.device, self.compute_type, self.batch_size = name, name, "cpu", "int8", 16
        self.recs, self.forced, self.forced_hyp, self.scored = recs, forced, forced_hyp, []

    def decode_batch(self, waves, **kw):
        return f"enc-{self.path}", [Recognition(r.text, r.avg_logprob, r.no_speech_prob, list(r.nbest)) for r in self.recs]

    def score_texts(self, enc, i, queries, hypotheses=()):
        self.scored.append((enc, i, list(queries), list(hypotheses)))
        return {q: self.forced[q] for q in queries}, self.forced_hyp


def test_the_ensemble_checks_the_merged_list_with_every_member_and_keeps_the_best_score():
    from mmpipeline.voice.asr import EnsembleRecognizer

    adapted = _Member("adapted", [Recognition("deck crews", -0.7, 0.0, [("deck crews", -0.7)])],
                      {"deck screws": -0.9}, -0.65)
    base = _Member("base", [Recognition("the screws", -0.5, 0.0, [("the screws", -0.5)])],
                   {"deck screws": -1.4}, -0.45)
    seen = []

    def verify(recs, start):
        seen.append([t for t, _ in recs[0].nbest])
        return [[("deck screws", 0.8)]]

    out = EnsembleRecognizer([adapted, base]).transcribe([np.zeros(10)], verify=verify)[0]
    assert seen == [["the screws", "deck crews"]]  # the merged n-best list, best first
    assert out.text == "the screws" and out.checked == {"deck screws": (0.8, -0.9)}
    assert out.forced_text == -0.45
    # each member scored the query and the chosen hypothesis on its own encoder output
    assert adapted.scored == [("enc-adapted", 0, ["deck screws"], ["the screws"])]
    assert base.scored == [("enc-base", 0, ["deck screws"], ["the screws"])]
