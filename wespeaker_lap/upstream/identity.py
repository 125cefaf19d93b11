"""Which checkpoint an upstream config loads, and a cheap identity of it: size plus a sampled SHA-256.

A frozen upstream's weights are not stored in model files (and a fine-tuned one's architecture and
preprocessing are still built from its source), so a model file records the identity of that source
and loading compares it: pointing a model at another ``wavlm.pt`` is caught instead of giving wrong
embeddings. Where the checkpoint is:

* an s3prl registered name (``wavlm_base_plus``): the file s3prl caches for it (``cache.cache_file``);
* a ``*_local`` name: ``upstream.path`` (a URL path: the file s3prl downloads it to);
* ``hf:<dir or hub id>``: the directory's ``config.json``, feature-extractor config and weight files.

The digest reads at most 16 MiB however large the file (256 blocks of 64 KiB spread evenly over it,
the first and last included), so checking a 1.2 GB checkpoint costs milliseconds; any other checkpoint
of the same size, whose weights differ throughout, gets another digest.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional

from wespeaker_lap.config import UpstreamConfig
from wespeaker_lap.upstream.cache import HF_PREFIX, cache_file

DIGEST_SCHEME = "sha256-sampled-v1"
_BLOCK = 1 << 16
_N_BLOCKS = 256
_HF_FILES = ("config.json", "preprocessor_config.json")
_HF_WEIGHTS = ("*.safetensors", "*.bin")


def file_digest(path: Path) -> str:
    """``"<scheme>:<hex>"``: SHA-256 of the size and of the whole file, or of 256 evenly spread blocks."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as f:
        if size <= _BLOCK * _N_BLOCKS:
            digest.update(f.read())
        else:
            for i in range(_N_BLOCKS):
                f.seek(i * (size - _BLOCK) // (_N_BLOCKS - 1))
                digest.update(f.read(_BLOCK))
    return f"{DIGEST_SCHEME}:{digest.hexdigest()}"


def upstream_files(cfg: UpstreamConfig) -> List[Path]:
    """The file(s) the upstream of ``cfg`` is built from; a missing one raises ``FileNotFoundError``."""
    if cfg.name.startswith(HF_PREFIX):
        folder = cache_file(cfg.name, cfg.cache_dir)
        files = [folder / name for name in _HF_FILES if (folder / name).is_file()]
        files += sorted(p for pattern in _HF_WEIGHTS for p in folder.glob(pattern) if p.is_file())
        if not any(p.suffix in (".safetensors", ".bin") for p in files):
            raise FileNotFoundError(f"{folder}: no weight file (*.safetensors, *.bin) for {cfg.name}")
        return files
    if cfg.path is None:
        return [cache_file(cfg.name, cfg.cache_dir)]
    if cfg.path.startswith(("http://", "https://")):
        from s3prl.util.download import _urls_to_filepaths

        from wespeaker_lap.upstream.cache import s3prl_download_dir

        with s3prl_download_dir(cfg.cache_dir):
            return [Path(_urls_to_filepaths(cfg.path, download=False))]
    return [Path(cfg.path).expanduser()]


def upstream_identity(cfg: UpstreamConfig) -> Dict[str, Any]:
    """``{"name", "file", "size", "digest"}`` of the upstream's checkpoint (an ``hf:`` folder: all its files)."""
    files = upstream_files(cfg)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: upstream checkpoint for {cfg.name} not found")
    if len(files) == 1:
        return {"name": cfg.name, "file": str(files[0]), "size": files[0].stat().st_size,
                "digest": file_digest(files[0])}
    combined = hashlib.sha256()
    for path in files:
        combined.update(f"{path.name}\t{path.stat().st_size}\t{file_digest(path)}\n".encode())
    return {"name": cfg.name, "file": str(files[0].parent), "size": sum(p.stat().st_size for p in files),
            "digest": f"{DIGEST_SCHEME}:{combined.hexdigest()}"}


def identity_mismatch(recorded: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """Why two identities differ (None if they agree); a digest of another scheme compares by size only."""
    if recorded.get("size") != current["size"]:
        return "the size differs"
    scheme = str(recorded.get("digest", "")).partition(":")[0]
    if scheme == DIGEST_SCHEME and recorded["digest"] != current["digest"]:
        return "the content differs"
    return None


def describe(identity: Dict[str, Any]) -> str:
    """``"wavlm_local from /x/wavlm.pt (1,234 bytes, sha256-sampled-v1:0123456789ab)"``."""
    digest = str(identity.get("digest", "?"))
    return f"{identity.get('name')} from {identity.get('file')} ({identity.get('size', 0):,} bytes, {digest[:31]})"
