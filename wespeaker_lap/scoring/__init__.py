"""Scoring: metrics, embedding reading, cosine, AS-Norm, calibration, result tables and DET plots.

Main modules: ``metrics`` (EER, minDCF, DET points, bootstrap CIs), ``embeddings`` (ark/scp into a
matrix), ``cosine``, ``asnorm``, ``calibration`` (quality-aware logistic regression),
``results`` (score files and tables), ``plots`` (DET curves). Entry points:
``python -m wespeaker_lap.bin.score`` and ``python -m wespeaker_lap.bin.make_report``.
"""
