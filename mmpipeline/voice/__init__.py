"""Voice search: spoken queries from audio file to published results.

* :mod:`mmpipeline.voice.audio`: decoding (``soundfile`` / libsndfile; torchaudio 2.9+ moved file
  decoding to TorchCodec, which is not installed here), the per-clip checks of the clean stage,
  and the torchaudio preprocessing (down-mix, resample to 16 kHz, BS.1770 loudness, silence trim);
* :mod:`mmpipeline.voice.features`: MFCC / log-mel summary vector per clip;
* :mod:`mmpipeline.voice.asr`: Whisper through faster-whisper (CTranslate2), offline, batched
  across clips;
* :mod:`mmpipeline.voice.vocab`: the shop's vocabulary (catalog words, frequent queries), the
  decoding prompt built from it, and the correction of low-confidence transcripts;
* :mod:`mmpipeline.voice.clean`: ``bronze.voice_queries`` -> ``silver.voice_queries`` +
  ``quarantine.voice_queries`` (called by the clean stage);
* :mod:`mmpipeline.voice.stage`: the ``transcribe`` stage -> ``gold.voice_transcripts`` and
  ``gold.voice_features``, incremental by audio hash and recogniser version.
"""
