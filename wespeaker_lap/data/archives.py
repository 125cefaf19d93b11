"""Official archives for recipe stage 1, shared by the VoxCeleb and MUSAN/RIRS_NOISES preparation.

* The catalogue: each :class:`Archive` (whole, or in ``..._partaa`` ... parts) and its published md5.
* :class:`ArchiveDir`: the folder of archives the user brought, with md5 checks and optional download.
  Archives in parts are read back to back in place (:func:`open_parts`), never joined on disk.
* :func:`extract_archive`: safe zip/tar extraction (no absolute paths, no ``..``, no links).
* :class:`Step` and :func:`run_steps`: units of work skipped on a re-run once their sentinel says done.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union


from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.utils.console import progress
from wespeaker_lap.utils.io import atomic_open, atomic_write_text
from wespeaker_lap.utils.parallel import parallel_map

logger = logging.getLogger(__name__)


class PrepareError(RuntimeError):
    """A tool or download needed by the preparation failed (ffmpeg missing, a conversion failed ...)."""


# ----------------------------------------------------------------------------- archives and md5


@dataclass(frozen=True)
class Archive:
    """An official file (an archive, or a list such as a trial list), published whole as ``name`` or as
    ``parts`` that concatenate to ``name``."""

    name: str
    parts: Tuple[str, ...] = ()


def _part_names(stem: str, letters: str) -> Tuple[str, ...]:
    return tuple(f"{stem}_parta{letter}" for letter in letters)


VOX1_DEV = Archive("vox1_dev_wav.zip", _part_names("vox1_dev_wav", "abcd"))
VOX1_TEST = Archive("vox1_test_wav.zip")
VOX2_DEV = Archive("vox2_dev_aac.zip", _part_names("vox2_dev_aac", "abcdefgh"))
VOX2_TEST = Archive("vox2_test_aac.zip")
MUSAN = Archive("musan.tar.gz")
RIRS_NOISES = Archive("rirs_noises.zip")

# The published sums. VoxCeleb: one per downloadable file (each part, and the test zips) and one per
# joined archive, as the VoxCeleb download page lists them; the same values are in
# github.com/clovaai/voxceleb_trainer lists/fileparts.txt (parts) and lists/files.txt (joined), and in
# PaddlePaddle/PaddleSpeech dataset/voxceleb/voxceleb2.py. MUSAN and RIRS_NOISES: OpenSLR 17 and 28, as
# WeSpeaker's examples/voxceleb/v2/local/download_data.sh checks them.
PUBLISHED_MD5: Dict[str, str] = {
    "vox1_dev_wav_partaa": "e395d020928bc15670b570a21695ed96",
    "vox1_dev_wav_partab": "bbfaaccefab65d82b21903e81a8a8020",
    "vox1_dev_wav_partac": "017d579a2a96a077f40042ec33e51512",
    "vox1_dev_wav_partad": "7bb1e9f70fddc7a678fa998ea8b3ba19",
    VOX1_DEV.name: "ae63e55b951748cc486645f532ba230b",
    VOX1_TEST.name: "185fdc63c3c739954633d50379a3d102",
    "vox2_dev_aac_partaa": "da070494c573e5c0564b1d11c3b20577",
    "vox2_dev_aac_partab": "17fe6dab2b32b48abaf1676429cdd06f",
    "vox2_dev_aac_partac": "1de58e086c5edf63625af1cb6d831528",
    "vox2_dev_aac_partad": "5a043eb03e15c5a918ee6a52aad477f9",
    "vox2_dev_aac_partae": "cea401b624983e2d0b2a87fb5d59aa60",
    "vox2_dev_aac_partaf": "fc886d9ba90ab88e7880ee98effd6ae9",
    "vox2_dev_aac_partag": "d160ecc3f6ee3eed54d55349531cb42e",
    "vox2_dev_aac_partah": "6b84a81b9af72a9d9eecbb3b1f602e65",
    VOX2_DEV.name: "bbc063c46078a602ca71605645c2a402",
    VOX2_TEST.name: "0d2b3ea430a821c33263b5ea37ede312",
    MUSAN.name: "0c472d4fc0c5141eca47ad1ffeb2a7df",
    RIRS_NOISES.name: "e6f48e257286e05de56413b4779d8ffb",
}

_HEX = frozenset("0123456789abcdef")


def _is_md5(field: str) -> bool:
    return len(field) == 32 and set(field.lower()) <= _HEX


def read_md5_file(path: Union[str, Path]) -> Dict[str, str]:
    """Read an md5 table into {file name: md5}; it may list parts, whole archives or both.

    Lines are ``md5sum`` output (``<md5>  <file>``) or ``<file> <md5>`` (as in voxceleb_trainer's
    ``lists/fileparts.txt``); a file may be given by a path or URL, of which its name is kept.
    """
    table: Dict[str, str] = {}
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: md5 file not found")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        first, last = line.split(maxsplit=1), line.rsplit(maxsplit=1)
        if len(first) == 2 and _is_md5(first[0]):
            digest, name = first[0], first[1].strip()
        elif len(last) == 2 and _is_md5(last[1]):
            name, digest = last[0].strip(), last[1]
        else:
            raise DataError(f"{path}:{lineno}: expected '<32 hex digits> <file name>' (or '<file name> "
                            f"<32 hex digits>'), got {line!r}")
        table[PurePosixPath(name.lstrip("*")).name] = digest.lower()
    return table


class ConcatenatedFile(io.RawIOBase):
    """A read-only, seekable view of files laid end to end (an archive published in parts)."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._files = [open(path, "rb") for path in paths]
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [0]  # byte offset of each part; the last entry is the total size
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._starts[-1]:
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1  # the (non-empty) part holding _pos
        part = self._files[index]
        part.seek(self._pos - self._starts[index])
        want = min(len(buffer), self._starts[index + 1] - self._pos)
        got = part.readinto(memoryview(buffer)[:want])
        self._pos += got
        return got

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def open_parts(paths: Sequence[Path]) -> io.BufferedReader:
    """Open the concatenation of ``paths`` as one buffered, seekable binary file."""
    return io.BufferedReader(ConcatenatedFile(paths), buffer_size=1 << 20)


def md5_of(paths: Sequence[Path], bar=None) -> str:
    """The md5 of the concatenation of ``paths``; ``bar`` (a progress bar in bytes) is advanced as it reads."""
    digest = hashlib.md5()
    with open_parts(paths) as f:
        while block := f.read(8 << 20):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    return digest.hexdigest()


class ArchiveDir:
    """The folder of official archives that the user brought, with md5 checks and optional download.

    ``md5`` (the user's table, e.g. from ``--md5_file``) overrides or extends :data:`PUBLISHED_MD5`;
    it may give the sums of parts, of whole archives, or both. ``url_bases`` (tried in order) are
    only used for files that are missing; ``user``/``password`` (or ``~/.netrc``) authenticate the
    download.
    """

    def __init__(self, path: Union[str, Path], md5: Optional[Mapping[str, str]] = None, skip_md5: bool = False,
                 url_bases: Sequence[str] = (), user: Optional[str] = None, password: Optional[str] = None):
        self.path = Path(path)
        self.user_md5 = dict(md5 or {})
        self.md5 = {**PUBLISHED_MD5, **self.user_md5}
        self.skip_md5 = skip_md5
        self.url_bases = [base.rstrip("/") for base in url_bases]
        self.user, self.password = user, password

    def files(self, archive: Archive) -> Optional[List[Path]]:
        """The files that make up ``archive`` (the joined file, else all its parts), or None."""
        if (self.path / archive.name).is_file():
            return [self.path / archive.name]
        parts = [self.path / part for part in archive.parts]
        if parts and all(part.is_file() for part in parts):
            return parts
        return None

    def require(self, archives: Iterable[Archive]) -> None:
        """Download what is missing (when URL bases are given); then fail naming all that is still missing."""
        archives = list(dict.fromkeys(archives))
        for archive in archives:
            if self.url_bases and self.files(archive) is None:
                for name in archive.parts or (archive.name,):
                    if not (self.path / name).is_file():
                        self._download(name)
        missing = [archive for archive in archives if self.files(archive) is None]
        if missing:
            lines = [f"  {a.name}" + (f" (or its parts {a.parts[0]} .. {a.parts[-1]})" if a.parts else "")
                     for a in missing]
            hint = ("Downloading failed (see the warnings above)." if self.url_bases else
                    "Put the official files there, or pass --download_url_base with the URL of a folder holding them.")
            raise DataError(f"{self.path}: missing archive files:\n" + "\n".join(lines) + "\n" + hint)

    def verified(self, archive: Archive) -> List[Path]:
        """The archive's files, after checking their md5 sums.

        Parts are checked one by one, so a bad part is named alone, unless the user's table gives the
        whole archive's sum and no part's (then the concatenation is checked) or a part has no sum.
        """
        paths = self.files(archive)
        if paths is None:
            self.require([archive])
            paths = self.files(archive)
        if self.skip_md5:
            logger.warning("%s: md5 check skipped (--skip_md5)", archive.name)
            return paths
        if self._check_parts(archive, paths):
            self._check_each(archive, paths)
        else:
            self._check_joined(archive, paths)
        return paths

    def _check_parts(self, archive: Archive, paths: List[Path]) -> bool:
        """Whether to check ``paths`` (the parts of ``archive``) one by one rather than joined: yes when
        every part has a sum, unless the user's table gives the whole archive's sum and no part's."""
        if paths == [self.path / archive.name] or not all(self.md5.get(p.name) for p in paths):
            return False
        return not (archive.name in self.user_md5 and not any(p.name in self.user_md5 for p in paths))

    def _check_each(self, archive: Archive, paths: List[Path]) -> None:
        sizes = [path.stat().st_size for path in paths]
        bad = []
        with progress(total=sum(sizes), desc=f"md5 {archive.name}", unit="B", unit_scale=True) as bar:
            for path in paths:
                actual, expected = md5_of([path], bar), self.md5[path.name]
                if actual != expected:
                    bad.append(f"  {path.name}: md5 is {actual}, expected {expected}{self._source(path.name)}")
        if bad:
            raise DataError(f"{self.path}: {len(bad)} of the {len(paths)} parts of {archive.name} failed the md5 "
                            f"check:\n" + "\n".join(bad) + "\nDownload the part" + ("s" if len(bad) > 1 else "")
                            + " above again; the other parts are fine.")
        logger.info("%s: md5 of each of its %d parts ok", archive.name, len(paths))

    def _check_joined(self, archive: Archive, paths: List[Path]) -> None:
        expected = self.md5.get(archive.name)
        if not expected:
            raise DataError(f"{archive.name}: no md5 known for this archive; give one in --md5_file or pass --skip_md5")
        with progress(total=sum(p.stat().st_size for p in paths), desc=f"md5 {archive.name}", unit="B",
                      unit_scale=True) as bar:
            actual = md5_of(paths, bar)
        if actual != expected:
            where = paths[0].name if len(paths) == 1 else f"its {len(paths)} parts joined"
            hint = "; list the parts' sums in --md5_file to find the bad part" if len(paths) > 1 else ""
            raise DataError(f"{archive.name} ({where} in {self.path}): md5 is {actual}, expected {expected}"
                            f"{self._source(archive.name)}; the archive is corrupt or incomplete{hint}")
        logger.info("%s: md5 ok", archive.name)

    def _source(self, name: str) -> str:
        return " (from --md5_file)" if name in self.user_md5 else " (published)"

    def _download(self, name: str) -> None:
        import urllib.error

        errors = []
        for base in self.url_bases:
            url = f"{base}/{name}"
            try:
                with self._opener(url).open(url, timeout=60) as response:
                    size = int(response.headers.get("Content-Length") or 0) or None
                    with atomic_open(self.path / name, "wb") as out, \
                            progress(total=size, desc=f"download {name}", unit="B", unit_scale=True) as bar:
                        while block := response.read(1 << 20):
                            out.write(block)
                            bar.update(len(block))
                logger.info("downloaded %s", url)
                return
            except (urllib.error.URLError, OSError) as err:
                errors.append(f"{url}: {err}")
        logger.warning("could not download %s:\n  %s", name, "\n  ".join(errors))

    def _opener(self, url: str):
        import netrc
        import urllib.parse
        import urllib.request

        user, password = self.user, self.password
        host = urllib.parse.urlparse(url).hostname
        if user is None and host:
            try:
                auth = netrc.netrc().authenticators(host)
            except (FileNotFoundError, netrc.NetrcParseError):
                auth = None
            if auth:
                user, password = auth[0], auth[2]
        if user is None:
            return urllib.request.build_opener()
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, url, user, password or "")
        return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))


# ----------------------------------------------------------------------------- safe extraction


def _safe_member_path(dest: Path, name: str, label: str) -> Path:
    """``dest/name`` for an archive member, refusing absolute paths and ``..`` (path traversal)."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if name.startswith(("/", "\\")) or ".." in parts or not parts:
        raise DataError(f"{label}: unsafe member path {name!r} (absolute or with '..'); refusing to extract")
    return dest.joinpath(*parts)


def _copy_to(src, target: Path) -> None:
    """Copy a member's stream to ``target`` through a temporary file, so no half file has its name.

    No fsync per file (a million of them would take hours); the step calls ``os.sync`` once at its end.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


_OPEN_ZIPS: Dict[Tuple[str, ...], zipfile.ZipFile] = {}  # one handle per process and archive


def _extract_zip_batch(job: Tuple[Tuple[str, ...], str, str, List[str]]) -> int:
    """Extract the named members of a (multi-part) zip; members already on disk are skipped."""
    paths, dest, label, names = job
    if paths not in _OPEN_ZIPS:
        _OPEN_ZIPS[paths] = zipfile.ZipFile(open_parts([Path(p) for p in paths]))
    archive = _OPEN_ZIPS[paths]
    for name in names:
        info = archive.getinfo(name)
        target = _safe_member_path(Path(dest), name, label)
        if target.is_file() and target.stat().st_size == info.file_size:
            continue  # finished by an interrupted earlier run
        try:
            with archive.open(info) as src:
                _copy_to(src, target)
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise DataError(f"{label}: cannot extract member {name!r}: {err}") from None
    return len(names)


def _extract_zip(paths: Sequence[Path], dest: Path, label: str, nj: int) -> None:
    try:
        with zipfile.ZipFile(open_parts(paths)) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as err:
        raise DataError(f"{label}: not a readable zip archive: {err}") from None
    names = []
    for info in infos:
        target = _safe_member_path(dest, info.filename, label)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(info.external_attr >> 16):
            logger.warning("%s: skipping symbolic link %s", label, info.filename)
        else:
            names.append(info.filename)
    key = tuple(str(path) for path in paths)
    batches = [(key, str(dest), label, names[i:i + 256]) for i in range(0, len(names), 256)]
    try:
        for _ in parallel_map(_extract_zip_batch, batches, nj, f"extract {label}", total=len(names),
                              advance=lambda count: count):
            pass
    finally:
        if key in _OPEN_ZIPS:  # opened in this process when nj is 1
            _OPEN_ZIPS.pop(key).close()


def _extract_tar(paths: Sequence[Path], dest: Path, label: str) -> None:
    try:
        with open_parts(paths) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive, \
                progress(desc=f"extract {label}", unit="file") as bar:
            for member in archive:  # streaming: a .tar.gz is read once, front to back
                target = _safe_member_path(dest, member.name, label)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    _copy_to(archive.extractfile(member), target)
                    bar.update()
                else:
                    logger.warning("%s: skipping %s (a link or special file)", label, member.name)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{label}: not a readable tar archive: {err}") from None


def extract_archive(paths: Sequence[Path], dest: Union[str, Path], label: str, nj: int = 1) -> None:
    """Unpack a zip or tar archive (given as its part files) under ``dest``, safely.

    Member paths that are absolute or contain ``..`` are errors naming the member; links are skipped.
    Zip members are extracted ``nj`` processes at a time, and a rerun skips members already on disk.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if label.endswith(".zip"):
        _extract_zip(paths, dest, label, nj)
    elif label.endswith((".tar", ".tar.gz", ".tgz")):
        _extract_tar(paths, dest, label)
    else:
        raise DataError(f"{label}: unknown archive type (expected .zip, .tar, .tar.gz or .tgz)")


# ----------------------------------------------------------------------------- sentinel steps


@dataclass
class Step:
    """One unit of preparation; done when ``sentinel`` holds ``signature`` (its inputs and options)."""

    name: str
    sentinel: Path
    work: Callable[[], None]
    needs: Tuple[Archive, ...] = ()  # archive files that must be present before it runs
    signature: str = "done"

    def done(self) -> bool:
        return self.sentinel.is_file() and self.sentinel.read_text(encoding="utf-8") == self.signature


def run_steps(steps: Sequence[Step], archives: ArchiveDir, before: Callable[[], None] = lambda: None) -> List[str]:
    """Run the steps that are not done, in order; return their names.

    Every archive the pending steps need is located (or downloaded) before any work starts, and
    ``before()`` is called then too (e.g. to check that ffmpeg is installed).
    """
    pending = []
    for step in steps:
        if step.done():
            logger.info("%s: already done (%s)", step.name, step.sentinel)
        else:
            pending.append(step)
    if not pending:
        return []
    archives.require(item for step in pending for item in step.needs)
    before()
    for step in pending:
        logger.info("%s: running", step.name)
        step.work()
        os.sync()  # the outputs reach the disk before the sentinel says they are there
        atomic_write_text(step.sentinel, step.signature)
    return [step.name for step in pending]
