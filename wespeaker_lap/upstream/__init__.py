"""Pre-trained upstreams (s3prl or HuggingFace) returning all hidden states ``[B, T, L, D]``.

``s3prl`` and ``transformers`` are imported inside the functions that need them, so importing this
package is cheap. Importing it filters the known, harmless warnings of s3prl and torch
(``wespeaker_lap.utils.console.quiet_third_party_warnings``).
"""
from wespeaker_lap.upstream.cache import (
    UpstreamError,
    WeightsNotFoundError,
    cache_file,
    download_weights,
    registered_url,
    stage_weights,
)
from wespeaker_lap.upstream.trust import UntrustedCheckpointError
from wespeaker_lap.upstream.upstream import Upstream
from wespeaker_lap.utils.console import quiet_third_party_warnings

quiet_third_party_warnings()

__all__ = [
    "UntrustedCheckpointError",
    "Upstream",
    "UpstreamError",
    "WeightsNotFoundError",
    "cache_file",
    "download_weights",
    "registered_url",
    "stage_weights",
]
