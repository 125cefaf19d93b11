"""Training one phase: ``trainer`` (the DDP loop, ``train``), ``step`` (one optimizer step: accumulation,
AMP, clipping, non-finite skips), ``checkpoint`` (full-state files, resume, pruning, epoch averaging),
``schedule`` (warmup-cosine LR), ``distributed`` (torchrun process group, RNG states) and ``progress``
(tqdm bar, JSONL metrics, training-curve PNG). Entry points: ``wespeaker_lap.bin.train`` and
``wespeaker_lap.bin.average_model``."""
