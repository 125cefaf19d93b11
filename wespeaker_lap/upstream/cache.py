"""Where s3prl keeps downloaded weights, and how to fill that cache ahead of time (offline route).

s3prl's registered names (``wavlm_base_plus``, ``hubert_large_ll60k``, ...) hard-code a URL, ignore
any path given to them, and cache the file as ``<download dir>/<sha256(url)>.<basename(url)>``
(``s3prl.util.download``). A cache directory staged once (``tools/download_upstream.py``) therefore
serves every later run, DDP workers included, with no network access.

The URL of a name is learnt from s3prl itself: its downloader logs ``Requesting URL: <url>`` before it
touches the network, and :func:`registered_url` stops the call at that record. Names whose hub entry
fetches several files (``vggish``, ``pase_plus``) are reported by their first file only.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

from wespeaker_lap.utils.io import PathLike, atomic_open

HF_PREFIX = "hf:"
_REQUEST_PREFIX = "Requesting URL: "


class UpstreamError(ValueError):
    """An upstream name, path or checkpoint is unusable; the message names it."""


class WeightsNotFoundError(FileNotFoundError):
    """An upstream's weights are neither cached nor downloadable; the message says where to put them."""


def s3prl_names(only_registered: bool = False) -> List[str]:
    """s3prl's upstream names; ``only_registered`` drops those that need a checkpoint path."""
    from s3prl.nn import S3PRLUpstream

    return S3PRLUpstream.available_names(only_registered_ckpt=only_registered)


@contextlib.contextmanager
def s3prl_download_dir(cache_dir: Optional[PathLike]) -> Iterator[None]:
    """Point s3prl's download cache at ``cache_dir`` (None: leave it) and restore it on exit."""
    import s3prl.util.download as download

    previous = download._download_dir
    if cache_dir is not None:
        download.set_dir(Path(cache_dir).expanduser().resolve())
    try:
        yield
    finally:
        download.set_dir(previous)


class _UrlRequested(Exception):
    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


@contextlib.contextmanager
def watch_s3prl_requests(stop: bool = False) -> Iterator[List[str]]:
    """Collect the URLs s3prl requests inside the block; ``stop`` aborts at the first request.

    With ``stop`` the block raises ``_UrlRequested`` before s3prl checks its cache or the network.
    """
    import s3prl.util.download as download

    logger = logging.getLogger(download.__name__)
    urls: List[str] = []

    def record(log_record: logging.LogRecord) -> bool:
        message = log_record.getMessage()
        if message.startswith(_REQUEST_PREFIX):
            urls.append(message[len(_REQUEST_PREFIX):])
            if stop:
                raise _UrlRequested(urls[-1])
        return True

    previous_level = logger.level
    logger.setLevel(logging.INFO)  # the record is only created when INFO is enabled
    logger.addFilter(record)
    try:
        yield urls
    finally:
        logger.removeFilter(record)
        logger.setLevel(previous_level)


def check_registered_name(name: str) -> None:
    """Raise ``UpstreamError`` unless ``name`` is an s3prl name that fetches its own weights."""
    if name.startswith(HF_PREFIX):
        raise UpstreamError(f"{name}: HuggingFace models are cached by transformers, not by s3prl; "
                            f"give a local directory as hf:/path/to/dir instead")
    if name not in s3prl_names(only_registered=True):
        if name in s3prl_names():
            raise UpstreamError(f"{name}: takes a local checkpoint (upstream.path); there is nothing to download")
        raise UpstreamError(f"{name}: not an s3prl upstream name{close_matches(name)}")


def close_matches(name: str) -> str:
    """``" (did you mean a, b?)"`` for the s3prl names closest to ``name``, or ``""``."""
    import difflib

    matches = difflib.get_close_matches(name, s3prl_names(), n=5, cutoff=0.5)
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def registered_url(name: str) -> str:
    """The URL s3prl downloads for the registered ``name``, found without downloading anything."""
    check_registered_name(name)
    from s3prl import hub

    try:  # in a scratch directory: the probe stops before any file is written, but after a mkdir
        with tempfile.TemporaryDirectory() as scratch, s3prl_download_dir(scratch):
            with watch_s3prl_requests(stop=True):
                getattr(hub, name)()
    except _UrlRequested as request:
        return request.url
    raise UpstreamError(f"{name}: s3prl builds it without downloading weights; there is nothing to cache")


def cache_file(name: str, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the weights of ``name`` live once cached (the file may not exist yet).

    An s3prl name gives the file s3prl looks for in ``cache_dir`` (or s3prl's default directory);
    an ``hf:`` name gives its local directory or hub snapshot, and ``WeightsNotFoundError`` when it
    is not cached.
    """
    if name.startswith(HF_PREFIX):
        from wespeaker_lap.upstream.hf import hf_local_dir

        return hf_local_dir(name[len(HF_PREFIX):], cache_dir, download=False)
    from s3prl.util.download import _urls_to_filepaths

    url = registered_url(name)
    with s3prl_download_dir(cache_dir):
        return Path(_urls_to_filepaths(url, download=False))


def download_weights(name: str, cache_dir: Optional[PathLike] = None) -> Path:
    """Download the weights of ``name`` into the cache once; return the file (``hf:``: the directory).

    s3prl names use s3prl's own downloader, which holds a file lock, so concurrent callers
    download once; ``hf:`` names use ``transformers.from_pretrained``. Nothing is fetched when the
    weights are already there.
    """
    if name.startswith(HF_PREFIX):
        from wespeaker_lap.upstream.hf import hf_local_dir

        return hf_local_dir(name[len(HF_PREFIX):], cache_dir, download=True)
    from s3prl.util.download import _urls_to_filepaths

    url = registered_url(name)
    with s3prl_download_dir(cache_dir):
        target = Path(_urls_to_filepaths(url, download=False))
        try:
            _urls_to_filepaths(url)
        except Exception as err:
            raise weights_not_found(name, url, target, err) from err
    return target


def stage_weights(name: str, source: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """Copy a user-provided checkpoint into the cache under the name s3prl expects; return it.

    The copy is atomic, so a concurrent reader never sees half a file.
    """
    check_registered_name(name)
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: checkpoint to stage not found")
    target = cache_file(name, cache_dir)
    with open(source, "rb") as src, atomic_open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, length=16 << 20)
    return target


def weights_not_found(
    name: str, url: str, target: Path, err: BaseException, registered: bool = True
) -> WeightsNotFoundError:
    """The error for weights that are not cached and could not be downloaded."""
    message = (
        f"{name}: weights not cached and the download failed ({type(err).__name__}: {err}).\n"
        f"  expected file: {target}\n"
        f"  source URL:    {url}"
    )
    if registered:
        cache_dir = target.parent
        message += (
            f"\nStage it on a machine with internet access and copy {cache_dir} over:\n"
            f"  python tools/download_upstream.py {name} --cache_dir {cache_dir}\n"
            f"or fetch the URL yourself and run\n"
            f"  python tools/download_upstream.py {name} --cache_dir {cache_dir} --from_file <downloaded file>"
        )
    return WeightsNotFoundError(message)
