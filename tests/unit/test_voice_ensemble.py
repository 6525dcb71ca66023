"""The adapted recogniser's pieces that need no model: the two-model decode keeps, per clip, the surer
model's text and offers both n-best lists to the rescoring; espeak-ng speaks, and a voice it lacks is one
clear error."""

from __future__ import annotations

import numpy as np
import pytest

from mmpipeline.voice.asr import EnsembleRecognizer, Recognition


class _Fake:
    def __init__(self, name, results):
        self.path, self.version, self.device, self.compute_type = f"/m/{name}", name, "cpu", "int8"
        self.results = results

    def transcribe(self, waves, **kw):
        assert len(waves) == len(self.results)
        return self.results


def test_the_surer_model_wins_per_clip_and_both_nbest_lists_are_kept():
    adapted = _Fake("adapted", [Recognition("deck screws", -0.2, 0.01, [("deck screws", -0.2), ("deck crews", -0.6)]),
                                Recognition("hammer drill", -0.9, 0.02, [("hammer drill", -0.9)])])
    base = _Fake("base", [Recognition("the screws", -0.8, 0.05, [("the screws", -0.8), ("deck crews", -0.4)]),
                          Recognition("hammer drills", -0.3, 0.03, [("hammer drills", -0.3)])])
    ens = EnsembleRecognizer([adapted, base])
    assert ens.version == "adapted+base" and ens.paths == ["/m/adapted", "/m/base"]
    out = ens.transcribe([np.zeros(10), np.zeros(10)])
    assert [(r.text, r.avg_logprob, r.no_speech_prob) for r in out] == [("deck screws", -0.2, 0.01),
                                                                        ("hammer drills", -0.3, 0.03)]
    # one list, each text once with its best log-prob, best first
    assert out[0].nbest == [("deck screws", -0.2), ("deck crews", -0.4), ("the screws", -0.8)]
    assert out[1].nbest == [("hammer drills", -0.3), ("hammer drill", -0.9)]


def test_espeak_speaks_and_names_a_missing_voice():
    pytest.importorskip("espeakng_loader")
    from mmpipeline.voice.adapt import synthesise

    x, sr = synthesise("cordless drill", "en-us+f3", 1.0)
    assert sr > 8000 and len(x) > 0.3 * sr and 0.05 < float(np.abs(x).max()) <= 1.0
    slow, _ = synthesise("cordless drill", "en-us+f3", 0.85)
    assert len(slow) > len(x)
    with pytest.raises(ValueError, match="espeak-ng has no voice 'xx-nowhere'"):
        synthesise("cordless drill", "xx-nowhere")
