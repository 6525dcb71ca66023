"""Clean: pure Spark transforms (``transforms``, ``sql``, ``text``), image checks (``images``) and the
clean stage (``stage.run``). The package imports nothing itself, so modules that reuse the transforms
(``mmpipeline.voice.clean``) sit below the stage that calls them, with no import cycle.
"""
