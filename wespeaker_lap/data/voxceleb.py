"""VoxCeleb preparation (recipe stage 1): official archives -> Kaldi data dirs and trial lists.

Steps, each skipped on a re-run once its sentinel file records it as done:

* ``extract_vox1_dev``, ``extract_vox1_test``, ``extract_vox2_dev``: check the published md5 of each
  archive, then unpack it safely. Archives published in parts (``..._partaa`` ...) are read back to
  back in place, never joined on disk.
* ``convert_vox2_dev``: VoxCeleb2 ``.m4a`` -> 16 kHz mono 16-bit wav with ffmpeg, ``nj`` at a time.
  Every file is tried; the failures are listed in a file, and then the step stops unless told to
  leave them out. A killed conversion resumes, keeping the wavs already written.
* ``lists_vox1`` and ``lists_vox2_dev``: Kaldi dirs ``vox1_dev``, ``vox1`` (dev + test, for the E and H
  lists) and ``vox2_dev`` with ``wav.scp``, ``utt2spk``, ``spk2utt`` and ``utt2dur``; keys look like
  ``id10270/5r0dWxy17C8/00001``.
* ``trials_vox1``: the cleaned lists as ``vox1/trials/vox1_{O,E,H}_cleaned.kaldi``.

The archive catalogue, md5 checks, safe extraction and sentinel steps are in
:mod:`wespeaker_lap.data.archives`.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from wespeaker_lap.data.archives import (
    VOX1_DEV,
    VOX1_TEST,
    VOX2_DEV,
    Archive,
    ArchiveDir,
    PrepareError,
    Step,
    extract_archive,
    run_steps,
)
from wespeaker_lap.data.kaldi import DataError, read_scp, utt2spk_to_spk2utt, write_map, write_trials
from wespeaker_lap.utils.io import atomic_write_text
from wespeaker_lap.utils.parallel import parallel_map

logger = logging.getLogger(__name__)


# The cleaned trial lists, by the name of the condition they define.
TRIAL_LISTS: Dict[str, Archive] = {
    "O": Archive("veri_test2.txt"), "E": Archive("list_test_all2.txt"), "H": Archive("list_test_hard2.txt")}

# Official (speakers, utterances), logged beside what was found so a partial corpus is noticed.
OFFICIAL_COUNTS: Dict[str, Tuple[int, int]] = {
    "vox1_dev": (1211, 148642), "vox1": (1251, 153516), "vox2_dev": (5994, 1092009)}

FFMPEG_HINT = "install it, e.g. `apt-get install ffmpeg` (Debian/Ubuntu) or `conda install -c conda-forge ffmpeg`"


def require_ffmpeg() -> str:
    """Path of ``ffmpeg``; an error saying how to install it when it is not on PATH."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise PrepareError(f"ffmpeg not found on PATH; it converts VoxCeleb2 m4a to wav: {FFMPEG_HINT}")
    return path


CONVERT_TIMEOUT_SECONDS = 600  # a file ffmpeg has not converted by then counts as failed (a hung decoder)


def _convert_m4a(job: Tuple[str, str]) -> Optional[str]:
    """Convert one m4a to a 16 kHz mono PCM16 wav; None when done, else why it failed.

    ffmpeg writes a temporary name that is renamed only once the wav reads back whole, so a killed
    conversion never leaves a wav that looks converted.
    """
    import soundfile as sf

    m4a, wav = job
    target = Path(wav)
    if target.is_file():
        return None  # converted by an interrupted earlier run (outputs appear only complete)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1", "-i", m4a,
           "-vn", "-ac", "1", "-ar", "16000", "-acodec", "pcm_s16le", "-f", "wav", str(tmp)]
    try:
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                timeout=CONVERT_TIMEOUT_SECONDS)
        if result.returncode != 0:
            reason = result.stderr.strip().splitlines()[-1:] or ["no message"]
            return f"ffmpeg failed (exit code {result.returncode}): {reason[0][-300:]}"
        try:
            frames = sf.info(str(tmp)).frames
        except RuntimeError as err:
            return f"ffmpeg wrote an unreadable wav: {err}"
        if frames == 0:
            return "ffmpeg wrote an empty wav (no audio in the file)"
        os.replace(tmp, target)
        return None
    except FileNotFoundError:
        raise PrepareError(f"ffmpeg not found on PATH: {FFMPEG_HINT}") from None
    except subprocess.TimeoutExpired:
        return f"ffmpeg did not finish within {CONVERT_TIMEOUT_SECONDS} s"
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Conversion:
    """The outcome of :func:`convert_m4a_tree`: files converted (now or by an earlier run) and those that failed."""

    converted: int
    failed: Dict[str, str]  # <spk>/<video>/<utt> -> why


def convert_m4a_tree(src_root: Union[str, Path], dst_root: Union[str, Path], nj: int = 1,
                     failures_file: Optional[Union[str, Path]] = None) -> Conversion:
    """Convert ``src_root/<spk>/<video>/<utt>.m4a`` to 16 kHz mono 16-bit ``dst_root/.../<utt>.wav``.

    Every file is tried; those that fail are returned and, when ``failures_file`` is given, listed
    there (``<key> <m4a path>: <reason>`` lines; the file is removed when none failed). Wavs already
    present are kept, so a killed run resumes where it stopped.
    """
    src_root, dst_root = Path(src_root), Path(dst_root)
    require_ffmpeg()
    m4as = sorted(src_root.glob("*/*/*.m4a"))
    if not m4as:
        raise DataError(f"{src_root}: no <speaker>/<video>/<utt>.m4a files to convert")
    for stale in dst_root.glob("*/*/.*.tmp"):  # temporary files of a killed run
        stale.unlink(missing_ok=True)
    keys = [m4a.relative_to(src_root).with_suffix("").as_posix() for m4a in m4as]
    jobs = [(str(m4a), str(dst_root / f"{key}.wav")) for m4a, key in zip(m4as, keys)]
    failed = {}
    for key, (m4a, _), error in zip(keys, jobs, parallel_map(_convert_m4a, jobs, nj, desc="m4a -> wav")):
        if error is not None:
            failed[key] = error
            logger.warning("%s: %s", m4a, error)
    if failures_file is not None:
        failures_file = Path(failures_file)
        if failed:
            atomic_write_text(failures_file, "".join(f"{key} {src_root / key}.m4a: {error}\n"
                                                     for key, error in failed.items()))
        else:
            failures_file.unlink(missing_ok=True)
    return Conversion(len(jobs) - len(failed), failed)


def list_utterances(root: Union[str, Path]) -> Dict[str, str]:
    """{``<spk>/<video>/<utt>``: absolute path} for every ``root/<spk>/<video>/<utt>.wav``."""
    root = Path(root).resolve()
    wavs = {wav.relative_to(root).with_suffix("").as_posix(): str(wav) for wav in root.glob("*/*/*.wav")}
    if not wavs:
        raise DataError(f"{root}: no <speaker>/<video>/<utt>.wav files")
    return wavs


def _wav_duration(path: str, sample_rate: int = 16000) -> float:
    import soundfile as sf

    try:
        info = sf.info(path)
    except RuntimeError as err:  # soundfile's error for unreadable files
        raise DataError(f"{path}: unreadable audio: {err}") from None
    if info.samplerate != sample_rate or info.channels != 1:
        raise DataError(f"{path}: {info.samplerate} Hz, {info.channels} channels; expected {sample_rate} Hz mono")
    return info.frames / info.samplerate


def wav_durations(wavs: Mapping[str, str], nj: int = 1) -> Dict[str, float]:
    """Duration in seconds of each wav from its header; each must be 16 kHz mono."""
    keys = sorted(wavs)
    durations = list(parallel_map(_wav_duration, [wavs[key] for key in keys], nj, desc="utt2dur"))
    return dict(zip(keys, durations))


def write_data_dir(out_dir: Union[str, Path], wavs: Mapping[str, str], durations: Mapping[str, float]) -> None:
    """Write ``wav.scp``, ``utt2spk``, ``spk2utt`` and ``utt2dur`` (sorted by key, C locale order)."""
    out_dir = Path(out_dir)
    utt2spk = {key: key.split("/")[0] for key in wavs}
    write_map(out_dir / "wav.scp", wavs)
    write_map(out_dir / "utt2spk", utt2spk)
    write_map(out_dir / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    write_map(out_dir / "utt2dur", {key: f"{durations[key]:.4f}" for key in wavs})
    name = out_dir.name
    speakers, official = len(set(utt2spk.values())), OFFICIAL_COUNTS.get(name)
    logger.info("%s: %d speakers, %d utterances%s", out_dir, speakers, len(wavs),
                f" (official {name}: {official[0]} speakers, {official[1]} utterances)" if official else "")


def convert_trials(src: Union[str, Path], dst: Union[str, Path], known: Iterable[str]) -> int:
    """Turn an official list (``1 id10270/5r0dWxy17C8/00001.wav id10270/...wav``) into Kaldi trials.

    Every utterance must be in ``known``; the error names the list, the line and the key.
    Returns the number of trials.
    """
    known = set(known)
    trials = []
    with open(src, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise DataError(f"{src}:{lineno}: expected '<1|0> <enroll>.wav <test>.wav', got {line.strip()!r}")
            enroll, test = (field.removesuffix(".wav") for field in fields[1:])
            for key in (enroll, test):
                if key not in known:
                    raise DataError(f"{src}:{lineno}: utterance {key!r} is not in VoxCeleb1 (dev + test)")
            trials.append((enroll, test, int(fields[0])))
    if not trials:
        raise DataError(f"{src}: no trials")
    write_trials(dst, trials)
    return len(trials)


def prepare_voxceleb(archives: ArchiveDir, data_dir: Union[str, Path], raw_dir: Optional[Union[str, Path]] = None,
                     nj: int = 1, keep_m4a: bool = False, skip_failed_conversions: bool = False) -> List[str]:
    """Prepare ``data_dir/{vox1_dev,vox1,vox2_dev}`` and the cleaned Vox1-O/E/H trials (see module doc).

    Audio is unpacked under ``raw_dir`` (default ``data_dir/raw_data``); the extracted m4a tree is
    removed after conversion unless ``keep_m4a``. VoxCeleb2 files that ffmpeg cannot convert are
    listed in ``raw_dir/voxceleb2_failed_conversions.txt``; then the preparation stops, unless
    ``skip_failed_conversions``, which leaves them out of ``vox2_dev`` (their m4a files are kept in
    ``raw_dir/voxceleb2_failed_m4a``). Returns the names of the steps that ran (empty when
    everything was already done).
    """
    data_dir = Path(data_dir)
    raw = Path(raw_dir) if raw_dir is not None else data_dir / "raw_data"
    vox1_dev_wav, vox1_test_wav = raw / "voxceleb1" / "dev" / "wav", raw / "voxceleb1" / "test" / "wav"
    vox2_m4a, vox2_wav = raw / "voxceleb2_m4a", raw / "voxceleb2_wav"
    failures_file = raw / "voxceleb2_failed_conversions.txt"

    def extract(archive: Archive, dest: Path) -> Callable[[], None]:
        return lambda: extract_archive(archives.verified(archive), dest, archive.name, nj)

    def convert() -> None:
        m4a_root = vox2_m4a / "dev" / "aac"
        result = convert_m4a_tree(m4a_root, vox2_wav, nj, failures_file)
        if result.failed:
            total = result.converted + len(result.failed)
            first = next(iter(result.failed.items()))
            if not skip_failed_conversions:
                raise PrepareError(
                    f"{len(result.failed)} of {total} VoxCeleb2 files would not convert to wav (the first: {first[0]}: "
                    f"{first[1]}); all are listed in {failures_file}. The {result.converted} converted files are kept: "
                    "re-run to retry only the failed ones, or pass --skip_failed_conversions to leave them out.")
            for key in result.failed:
                kept = raw / "voxceleb2_failed_m4a" / f"{key}.m4a"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(m4a_root / f"{key}.m4a", kept)
            logger.warning("left out %d of %d VoxCeleb2 files that would not convert (--skip_failed_conversions); "
                           "listed in %s, their m4a files kept in %s", len(result.failed), total, failures_file,
                           raw / "voxceleb2_failed_m4a")
        if not keep_m4a:
            shutil.rmtree(vox2_m4a)

    def lists_vox1() -> None:
        dev, test = list_utterances(vox1_dev_wav), list_utterances(vox1_test_wav)
        both = {**dev, **test}
        if len(both) != len(dev) + len(test):
            raise DataError(f"{vox1_dev_wav} and {vox1_test_wav} share utterance keys")
        durations = wav_durations(both, nj)
        write_data_dir(data_dir / "vox1_dev", dev, durations)
        write_data_dir(data_dir / "vox1", both, durations)

    def lists_vox2() -> None:
        wavs = list_utterances(vox2_wav)
        if failures_file.is_file():
            left_out = len(failures_file.read_text(encoding="utf-8").splitlines())
            logger.warning("%s: %d utterances left out (they would not convert; see %s)", data_dir / "vox2_dev",
                           left_out, failures_file)
        write_data_dir(data_dir / "vox2_dev", wavs, wav_durations(wavs, nj))

    def trials() -> None:
        known = read_scp(data_dir / "vox1" / "wav.scp")
        for condition, trial_list in TRIAL_LISTS.items():
            out = data_dir / "vox1" / "trials" / f"vox1_{condition}_cleaned.kaldi"
            count = convert_trials(archives.files(trial_list)[0], out, known)
            logger.info("%s: %d trials", out, count)

    steps = [
        Step("extract_vox1_dev", raw / ".done_extract_vox1_dev", extract(VOX1_DEV, raw / "voxceleb1" / "dev"),
             (VOX1_DEV,)),
        Step("extract_vox1_test", raw / ".done_extract_vox1_test", extract(VOX1_TEST, raw / "voxceleb1" / "test"),
             (VOX1_TEST,)),
        Step("extract_vox2_dev", raw / ".done_extract_vox2_dev", extract(VOX2_DEV, vox2_m4a), (VOX2_DEV,)),
        Step("convert_vox2_dev", raw / ".done_convert_vox2_dev", convert),
        Step("lists_vox1", data_dir / ".done_lists_vox1", lists_vox1, signature=f"{vox1_dev_wav}\n{vox1_test_wav}"),
        Step("lists_vox2_dev", data_dir / ".done_lists_vox2_dev", lists_vox2, signature=str(vox2_wav)),
        Step("trials_vox1", data_dir / ".done_trials_vox1", trials, tuple(TRIAL_LISTS.values())),
    ]

    def check_tools() -> None:
        if not steps[3].done():  # the m4a conversion is still to do
            require_ffmpeg()

    return run_steps(steps, archives, before=check_tools)
