"""Scoring: metrics, embedding reading, cosine, AS-Norm, calibration, the stage-5 pipeline, result tables, plots.

Main modules: ``metrics`` (EER, minDCF, DET points, bootstrap CIs), ``embeddings`` (ark/scp into a
matrix), ``cosine``, ``asnorm`` (the ``Cohort`` and its statistics), ``calibration`` (quality-aware
logistic regression), ``pipeline`` (embeddings + data dirs -> cosine, AS-Norm and calibrated scores),
``results`` (score files and tables), ``plots`` (DET curves). Entry points:
``python -m wespeaker_lap.bin.score`` and ``python -m wespeaker_lap.bin.make_report``.
"""
