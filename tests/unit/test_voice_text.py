"""Spoken-query text: written form of sizes, the WER normalisation, word-level correction against
the catalog / query-log vocabulary with held-out queries (no model, no Spark)."""

from __future__ import annotations

import pytest

from mmpipeline.voice.textnorm import compound_lexicon, wer_form, wer_form_v2, written_form
from mmpipeline.voice.vocab import Corrector, Vocabulary, correct_all, phonetic_key


@pytest.mark.parametrize("spoken,written", [
    ("3 slash 4 inch plywood", "3/4 inch plywood"),
    ("free slash for x4x8 a slash c for plywood", "3/4x4x8 a/c for plywood"),  # homophones next to slash
    ("Two by four stud", "2x4 stud"),
    ("4 by 8 by 1 sheet", "4x8x1 sheet"),
    ("4 x 8 plywood", "4x8 plywood"),
    ("stand by me", "stand by me"),  # "by" between words stays
    ("go for it to win", "go for it to win"),  # homophones elsewhere stay
])
def test_written_form_writes_spoken_sizes_the_shop_way(spoken, written):
    assert written_form(spoken) == written


def test_wer_form_drops_spelling_conventions_on_both_sides():
    assert wer_form("Funnel 6-inch") == wer_form("funnel 6 inch") == "funnel 6 inch"
    assert wer_form("Nature's plus") == wer_form("natures plus")
    assert wer_form("missouri 8ft") == wer_form("missouri 8 ft")
    assert wer_form("3/4 in. plywood, white") == "3/4 in plywood white"  # fractions are kept


def test_phonetic_key_groups_words_that_sound_alike():
    assert phonetic_key("stufurhome") == phonetic_key("stuforhome")
    assert phonetic_key("shelving") == phonetic_key("chelving")
    assert phonetic_key("ceiling") == phonetic_key("cieling")
    assert phonetic_key("plywood") != phonetic_key("flooring")


def _vocab() -> Vocabulary:
    titles = ["Stufurhome Double Vanity in White", "Stufurhome Single Vanity", "Bamboo Palm in 10 in. Pot",
              "Bamboo Blinds", "Triple Switch Plate White", "Triple Switch Plate Ivory", "Switchplate Cover",
              "Switchplate Cover Almond", "Sheathing Plywood 4x8", "Sheathing Plywood 1/2 in."]
    queries = [("double vanity", 3), ("bamboo palm", 1), ("switch plate", 2), ("toliet seat", 1),
               ("toliet paper holder", 1), ("moen kitchen", 1), ("moen shower", 1), ("momeni rugs", 1)]
    return Vocabulary.build(queries, titles)


def test_word_correction_joins_split_words_and_fixes_unknown_ones():
    c = Corrector(_vocab(), min_query_similarity=0.9, min_word_similarity=0.6)
    assert c.correct_words("double vanity stu for home").text == "double vanity stufurhome"
    assert c.correct_words("bambi palm").text == "bamboo palm"
    assert c.correct_words("cheating plywood").text == "sheathing plywood"
    # known words are never joined or replaced, even when their concatenation is a catalog word
    assert c.correct_words("triple switch plate").method == "none"
    # a typo shared by two logged queries is vocabulary (the shop's spelling); one query's is not
    assert c.correct_words("toliet seat").method == "none"
    assert "momeni" not in c.word_list


def test_word_correction_holds_out_the_clips_own_query():
    c = Corrector(_vocab(), min_query_similarity=0.9, min_word_similarity=0.6)
    assert c.correct_words("toliet seat").method == "none"
    # with one of the two "toliet" queries held out, "toliet" is seen in one query only: not vocabulary
    known, _ = c._known_words({"toliet seat"})
    assert "toliet" not in known and "toliet" in c._known_words(None)[0]


def test_correct_all_snaps_low_confidence_and_word_corrects_per_mode():
    c = Corrector(_vocab(), min_query_similarity=0.6, min_word_similarity=0.6)
    texts = ["bambi palm", "bambi palm"]
    lps = [-0.1, -0.9]
    assert [x.method for x in correct_all(c, texts, lps, -0.3, words="off")] == ["none", "query"]
    both = correct_all(c, texts, lps, -0.3, words="always")
    assert [(x.text, x.method) for x in both] == [("bamboo palm", "words"), ("bamboo palm", "query")]
    held = correct_all(c, texts, lps, -0.3, holdout=[{"bamboo palm"}] * 2, words="always")
    assert [x.method for x in held] == ["words", "words"]  # its own query held out: no snap to it


def test_query_snap_matches_by_sound_and_snaps_confident_transcripts_only_when_very_close():
    v = Vocabulary.build([("singel wall stove pipe", 1), ("single hung window", 4), ("stove pipe", 2),
                          ("wall oven", 3), ("ceiling fan", 5)], [])
    c = Corrector(v, min_query_similarity=0.8, min_word_similarity=0.6)
    # Whisper spells the word it hears; the shop's log has the customer's spelling
    near = c.nearest_query("single wall storm pipe")
    assert near.text == "singel wall stove pipe" and 0.8 <= near.similarity < 0.9
    assert c.nearest_query("single wall storm pipe", exclude={"singel wall stove pipe"}).text != "singel wall stove pipe"
    texts, lps = ["single wall storm pipe", "ceiling fans"], [-0.1, -0.1]  # both confident
    assert [x.method for x in correct_all(c, texts, lps, -0.3, words="off")] == ["none", "none"]
    snapped = correct_all(c, texts, lps, -0.3, words="off", snap_above=0.85)
    assert [(x.text, x.method) for x in snapped] == [("single wall storm pipe", "none"), ("ceiling fan", "query")]
    low = correct_all(c, texts, [-0.9, -0.9], -0.3, words="off", snap_above=0.85)
    assert [x.text for x in low] == ["singel wall stove pipe", "ceiling fan"]
    # held out, the nearest other query is too far: the transcript stays
    held = correct_all(c, texts, [-0.9, -0.9], -0.3, holdout=[{"singel wall stove pipe"}, {"ceiling fan"}],
                       words="off", snap_above=0.85)
    assert [x.method for x in held] == ["none", "none"]


def test_rescore_prefers_the_hypothesis_the_vocabulary_explains_and_respects_the_hold_out():
    from mmpipeline.voice.asr import Recognition
    from mmpipeline.voice.vocab import rescore

    c = Corrector(_vocab(), min_query_similarity=0.9, min_word_similarity=0.6)
    r = Recognition("bambi palm", -0.30, 0.01, [("bambi palm", -0.30), ("bamboo palm", -0.45)])
    assert rescore([r], c, 1.0)[0].text == "bamboo palm"  # 0.55 > -0.30 + 0.5
    assert rescore([r], c, 1.0)[0].avg_logprob == -0.45
    assert rescore([r], c, 0.0)[0].text == "bambi palm"  # weight 0: Whisper's own choice
    assert rescore([r], c, 0.1)[0].text == "bambi palm"  # a small weight does not outvote a clear margin
    # "toliet" is vocabulary through two logged queries; with one of them held out it is not
    t = Recognition("toilet seat", -0.2, 0.0, [("toilet seat", -0.2), ("toliet seat", -0.5)])
    assert rescore([t], c, 1.0)[0].text == "toliet seat"
    assert rescore([t], c, 1.0, holdout=[{"toliet seat"}])[0].text == "toilet seat"
    # a recognition without an n-best list (a stored transcript) is kept as it is
    assert rescore([Recognition("bambi palm", -0.3, 0.0)], c, 1.0)[0].text == "bambi palm"


class _FakeRecognizer:
    """Stands in for Whisper: the text depends on the decode (first pass, stretched copy, sampling)."""

    def __init__(self):
        self.calls = []

    def transcribe(self, waves, prompt=None, hotwords=None, temperature=0.0, best_of=5, seed=0):
        from mmpipeline.voice.asr import Recognition

        self.calls.append((len(waves), temperature, [len(w) for w in waves]))
        out = []
        for w in waves:
            clip = int(round(float(w[0]) * 10))  # the clip's number is its first sample x 10
            if clip == 0:  # a confident clip
                out.append(Recognition("pavement paint", -0.1, 0.0, [("pavement paint", -0.1)]))
            elif temperature > 0:
                loop = "national " * 20  # a sampled repetition loop scores high
                out.append(Recognition(loop, -0.1, 0.0, [(loop, -0.1), ("sheathing plywood", -0.62), ("she", -0.9)]))
            elif len(w) > 16000:  # the time-stretched copy is longer
                out.append(Recognition("cheating ply wood", -0.55, 0.0, [("cheating ply wood", -0.55)]))
            else:
                out.append(Recognition("cheating plywood", -0.6, 0.2, [("cheating plywood", -0.6), ("she", -0.7)]))
        return out


def test_redecode_pools_the_second_decodes_of_low_confidence_clips_only():
    import numpy as np

    from mmpipeline.config import VoiceConfig
    from mmpipeline.voice.stage import recognise
    from mmpipeline.voice.vocab import rescore

    waves = [np.full(16000, 0.0, np.float32), np.full(16000, 0.1, np.float32)]
    off = _FakeRecognizer()
    assert [r.text for r in recognise(off, waves, VoiceConfig())] == ["pavement paint", "cheating plywood"]
    assert len(off.calls) == 1  # off by default: one decode

    rec = _FakeRecognizer()
    v = VoiceConfig(redecode_below_logprob=-0.3, redecode_time_stretch=0.85, redecode_temperatures=[0.4])
    out = recognise(rec, waves, v)
    # the second decodes see the low-confidence clip only: a stretched copy (longer), then samples
    assert [(n, t) for n, t, _ in rec.calls] == [(2, 0.0), (1, 0.0), (1, 0.4)]
    assert rec.calls[1][2][0] > 16000
    assert out[0].nbest == [("pavement paint", -0.1)]
    assert out[1].nbest == [("cheating ply wood", -0.55), ("cheating plywood", -0.6), ("sheathing plywood", -0.62),
                            ("she", -0.7)]  # each text once, at its best log-prob; no repetition loop
    assert (out[1].text, out[1].avg_logprob, out[1].no_speech_prob) == ("cheating ply wood", -0.55, 0.2)
    # the vocabulary rescoring chooses among all of them
    c = Corrector(_vocab(), min_query_similarity=0.9, min_word_similarity=0.6)
    assert rescore(out, c, 1.0)[1].text == "sheathing plywood"
    assert rescore(recognise(_FakeRecognizer(), waves, VoiceConfig()), c, 1.0)[1].text == "cheating plywood"


def test_nbest_search_weights_hypotheses_and_fuses_their_rankings():
    from mmpipeline.voice.search import fuse_rankings, fuse_scores, hypothesis_weights

    assert hypothesis_weights([-0.2, -0.5], 0).tolist() == [1.0, 0.0]
    w = hypothesis_weights([-0.2, -0.5], 0.3)
    assert w[0] > w[1] > 0 and abs(w.sum() - 1) < 1e-9
    # "b" is second for both hypotheses, "a" first for the likelier one, "c" first for the other
    assert fuse_rankings([["a", "b"], ["c", "b"]], [0.6, 0.4], k=3) == ["b", "a", "c"]
    assert fuse_rankings([["a", "b"], ["c", "b"]], [1.0, 0.0], k=3) == ["a", "b"]
    assert fuse_scores([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]], [0.5, 0.5]).tolist() == [2.0, 0.5, 1.0]


@pytest.mark.parametrize("typed, spoken", [
    ("1/2 in. pvc", "one half inch pvc"),
    ("1/2 in pvc", "half inch PVC"),
    ("2 1/2 inch screws", "two and a half inch screws"),
    ("2.5 in screws", "2 1/2 inches screws"),
    ("3/4 x 4 x 8 a/c plywood", "three slash four by four by eight a slash c plywood"),
    ("2x4 lumber", "two by four lumber"),
    ("1 gang wall plate", "one gang wall plate"),
    ("bulb 100watts", "bulb one hundred watts"),
    ("24 in vanity", "twenty four inch vanity"),
    ("5 gal bucket", "five gallon bucket"),
    ("5/8 drywall", "five eighths drywall"),
    ("up/down lights", "up slash down lights"),
    ("6 ft. ladder", "six foot ladder"),
])
def test_wer_form_v2_writes_spoken_numbers_units_and_fractions_like_typed_ones(typed, spoken):
    assert wer_form_v2(typed) == wer_form_v2(spoken)
    assert wer_form(typed) != wer_form(spoken)  # the v1 normaliser counted these as errors


def test_wer_form_v2_keeps_different_words_different_and_joins_only_catalog_compounds():
    comp = compound_lexicon(["kohler bathtub drain", "acrylic bathtub", "bath mat", "bath towel",
                             "tub spout", "tub drain", "shop light", "shop vac"])
    assert "bathtub" in comp and "shoplight" not in comp
    assert wer_form_v2("bath tub drain", comp) == wer_form_v2("bathtub drain", comp) == "bathtub drain"
    assert wer_form_v2("shop light", comp) == "shop light"
    assert wer_form_v2("four door", comp) != wer_form_v2("for door", comp)  # homophones stay errors
    assert wer_form_v2("2 in pipe") != wer_form_v2("3 in pipe")
    assert wer_form_v2("half bath") == "half bath"  # 'half' only becomes 1/2 before a unit


def test_bench_wer_keeps_the_v1_figure_next_to_v2_and_tunes_correction_on_the_other_half():
    import pandas as pd

    from mmpipeline.bench.voice import split_halves, tune_correction, wer_slices
    from mmpipeline.config import VoiceConfig
    from mmpipeline.voice.asr import Recognition

    ids = [f"v{i}" for i in range(12)]
    tune = split_halves(ids)
    assert tune.any() and (~tune).any() and (split_halves(ids) == tune).all()  # fixed, both halves used
    refs = ["bamboo palm", "double vanity stufurhome", "sheathing plywood", "2 in pipe"] * 3
    m = pd.DataFrame({"voice_query_id": ids, "transcript": refs, "kind": ["neural", "formant"] * 6,
                      "noise": "clean", "sample_rate": 16000})
    spoken = ["bambi palm", "double vanity stu for home", "cheating plywood", "two inch pipe"] * 3
    w = wer_slices(m, spoken)
    assert w["all"] > w["v2"]["all"] > 0  # v2 forgives "two inch" = "2 in", not the misheard words
    raw = [Recognition(t, -0.9, 0.0) for t in spoken]
    v = VoiceConfig()
    c = Corrector(_vocab(), min_query_similarity=0.9, min_word_similarity=0.6)
    t = tune_correction(m, raw, v, c, [{r} for r in refs], None)
    assert t["tune_clips"] + t["eval_clips"] == 12
    assert t["chosen"]["correct_below_logprob"] is not None  # word correction fixes bambi/stu for home/cheating
    ev = t["eval_half_v2_wer"]
    assert ev["chosen"]["all"] < ev["no_correction"]["all"]

    from mmpipeline.bench.voice import snap_curve

    # the clips' own queries in the log ("bamboo palm" is logged): snapping helps; held out it cannot
    v_snap = VoiceConfig(word_correction="off")
    curve = snap_curve(m, {"full_log": raw, "held_out": raw}, v_snap, Corrector(_vocab()), [{r} for r in refs], None,
                       grid=((0.6, None), (0.99, None)))
    none, loose, strict = curve["rows"]
    assert none["setting"] == "no correction" and loose["setting"] == "0.6/None"
    assert loose["full_log"]["all"] < none["full_log"]["all"]
    assert loose["full_log"]["all"] < loose["held_out"]["all"]
