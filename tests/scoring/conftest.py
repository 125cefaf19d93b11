"""Tiny kaldiio ark/scp fixtures shared by the scoring tests."""
from pathlib import Path
from typing import Dict

import kaldiio
import numpy as np


def write_ark(directory: Path, name: str, vectors: Dict[str, np.ndarray]) -> Path:
    """Write ``vectors`` with ``kaldiio.WriteHelper`` as ``<name>.ark`` / ``<name>.scp``; return the scp."""
    directory.mkdir(parents=True, exist_ok=True)
    ark, scp = directory / f"{name}.ark", directory / f"{name}.scp"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer:
        for key, vector in vectors.items():
            writer(key, vector)
    return scp
