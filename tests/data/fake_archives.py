"""Fabricated VoxCeleb, MUSAN and RIRS_NOISES archives with the official names, layouts and formats.

Tiny (a few short utterances) and deterministic. The md5 sums of the joined archives go to an
md5sum-style file, since the published sums cannot match fabricated content; ``part_md5_file``
writes one with the sums of the parts instead.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf

RATE = 16000

# key -> duration in seconds; every key is <speaker>/<video>/<utterance>
VOX1_DEV = {"id10001/1zcIwhmdeo4/00001": 0.50, "id10001/1zcIwhmdeo4/00002": 0.61,
            "id10001/7gWzIy6yIIk/00001": 0.72, "id10002/0_laIeN-Q44/00001": 0.83}
VOX1_TEST = {"id10270/5r0dWxy17C8/00001": 0.55, "id10270/x6uYqmx31kE/00001": 0.66,
             "id10271/1gtz-CUIygI/00001": 0.77}
VOX2_DEV = {"id00012/21Uxsk56VDQ/00001": 0.90, "id00012/21Uxsk56VDQ/00002": 1.10,
            "id00015/0fijmz4vTVU/00001": 1.30}
# official file name -> (label, enroll key, test key) lines
TRIALS = {
    "veri_test2.txt": [(1, "id10270/5r0dWxy17C8/00001", "id10270/x6uYqmx31kE/00001"),
                       (0, "id10270/5r0dWxy17C8/00001", "id10271/1gtz-CUIygI/00001")],
    "list_test_all2.txt": [(1, "id10001/1zcIwhmdeo4/00001", "id10001/7gWzIy6yIIk/00001"),
                           (0, "id10002/0_laIeN-Q44/00001", "id10270/x6uYqmx31kE/00001"),
                           (1, "id10001/1zcIwhmdeo4/00002", "id10001/1zcIwhmdeo4/00001")],
    "list_test_hard2.txt": [(0, "id10001/1zcIwhmdeo4/00001", "id10002/0_laIeN-Q44/00001"),
                            (1, "id10270/x6uYqmx31kE/00001", "id10270/5r0dWxy17C8/00001")],
}
# MUSAN: relative path -> (type, seconds); RIRs: relative path under simulated_rirs -> room
MUSAN_FILES = {"music/fma/music-fma-0000.wav": ("music", 12.0),   # windows at 0, 3, 6 s
               "noise/free-sound/noise-free-sound-0000.wav": ("noise", 4.0),  # shorter than 5 s: dropped
               "noise/free-sound/noise-free-sound-0001.wav": ("noise", 5.0),  # one window
               "speech/librivox/speech-librivox-0000.wav": ("speech", 8.0)}   # windows at 0, 3 s
RIR_FILES = {"smallroom/Room001/Room001-00001.wav": "smallroom", "smallroom/Room002/Room002-00001.wav": "smallroom",
             "mediumroom/Room001/Room001-00001.wav": "mediumroom", "largeroom/Room001/Room001-00001.wav": "largeroom"}
# real RIRs listed in real_rirs_isotropic_noises/rir_list: rir-id -> channels (RVB2014 ones are multi-channel)
REAL_RIRS = {"air_type1_air_binaural_aula_carolina_1_1_1": 1, "RVB2014_type1_rir_largeroom1_far_angla": 2}


def tone(seconds: float, seed: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """Deterministic int16 audio [S, C]: a sine plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 37 * seed) * t) + 0.01 * rng.standard_normal(len(t))
    return np.repeat((wave * 32767).astype(np.int16)[:, None], channels, axis=1)


def wav_bytes(seconds: float, seed: int, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds, seed, channels=channels), RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def m4a_bytes(seconds: float, seed: int) -> bytes:
    """AAC in an MP4 container, made by ffmpeg from 22.05 kHz stereo audio (so conversion must resample)."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the fake VoxCeleb2 archive is made with ffmpeg: apt-get install ffmpeg (setup.sh does)")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.m4a"
        sf.write(src, tone(seconds, seed, rate=22050, channels=2), 22050, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(src), "-c:a", "aac", "-b:a", "48k",
                        str(dst)], check=True)
        return dst.read_bytes()


def write_zip(path: Path, members: Dict[str, bytes]) -> None:
    """A stored zip with the members and, like the official archives, their directory entries."""
    dirs = sorted({"/".join(name.split("/")[:depth]) + "/"
                   for name in members for depth in range(1, name.count("/") + 1)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name in dirs:
            archive.writestr(name, b"")
        for name, data in members.items():
            archive.writestr(name, data)


def split_into_parts(path: Path, part_names: Sequence[str]) -> None:
    """Replace ``path`` by byte ranges named ``part_names`` (like the official ``..._partaa`` files)."""
    data = path.read_bytes()
    bounds = np.linspace(0, len(data), len(part_names) + 1).astype(int)
    for name, start, end in zip(part_names, bounds[:-1], bounds[1:]):
        (path.parent / name).write_bytes(data[start:end])
    path.unlink()


# A VoxCeleb2 utterance that ffmpeg cannot decode (bytes that are no MP4), added with ``bad_m4a``.
BAD_VOX2 = "id00015/0fijmz4vTVU/00002"


@dataclass
class FakeArchives:
    archive_dir: Path
    md5_file: Path  # md5sum-style sums of the joined archives; the builders append to it


def part_md5_file(fake: FakeArchives, path: Path) -> Path:
    """An md5sum-style file with the sum of every file in the archive folder (each part, never the joined)."""
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n"
             for p in sorted(fake.archive_dir.iterdir()) if p.is_file() and p != fake.md5_file]
    path.write_text("".join(lines))
    return path


def _add_md5(fake: FakeArchives, name: str) -> None:
    digest = hashlib.md5((fake.archive_dir / name).read_bytes()).hexdigest()
    with open(fake.md5_file, "a", encoding="utf-8") as f:
        f.write(f"{digest}  {name}\n")


def make_fake_voxceleb(archive_dir: Path, bad_m4a: bool = False) -> FakeArchives:
    """vox1 dev in 4 parts, vox1 test whole, vox2 dev (real m4a) in 8 parts, the 3 cleaned trial lists.

    With ``bad_m4a`` the vox2 archive also holds :data:`BAD_VOX2`, an m4a that will not convert.
    """
    archive_dir.mkdir(parents=True, exist_ok=True)
    fake = FakeArchives(archive_dir, archive_dir / "md5.txt")
    seeds = iter(range(1000))
    sets: List[Tuple[str, Dict[str, float], str, str, Sequence[str]]] = [
        ("vox1_dev_wav.zip", VOX1_DEV, "wav/", ".wav", [f"vox1_dev_wav_parta{c}" for c in "abcd"]),
        ("vox1_test_wav.zip", VOX1_TEST, "wav/", ".wav", []),
        ("vox2_dev_aac.zip", VOX2_DEV, "dev/aac/", ".m4a", [f"vox2_dev_aac_parta{c}" for c in "abcdefgh"]),
    ]
    for name, utts, prefix, ext, parts in sets:
        make = wav_bytes if ext == ".wav" else m4a_bytes
        members = {f"{prefix}{key}{ext}": make(dur, next(seeds)) for key, dur in utts.items()}
        if bad_m4a and ext == ".m4a":
            members[f"{prefix}{BAD_VOX2}{ext}"] = b"\x00\x00\x00\x18ftypM4A broken beyond repair" * 20
        write_zip(archive_dir / name, members)
        _add_md5(fake, name)
        if parts:
            split_into_parts(archive_dir / name, parts)
    for name, lines in TRIALS.items():
        (archive_dir / name).write_text("".join(f"{label} {e}.wav {t}.wav\n" for label, e, t in lines))
    return fake


def make_fake_musan_rirs(archive_dir: Path, extracted: bool = False) -> FakeArchives:
    """``musan.tar.gz`` and ``rirs_noises.zip`` (or, if ``extracted``, their ``musan/`` and ``RIRS_NOISES/``)."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    fake = FakeArchives(archive_dir, archive_dir / "md5.txt")
    musan = {f"musan/{rel}": wav_bytes(sec, seed) for seed, (rel, (_, sec)) in enumerate(MUSAN_FILES.items())}
    musan.update({f"musan/{kind}/README": b"readme\n" for kind in ("music", "noise", "speech")})
    rirs = {f"RIRS_NOISES/simulated_rirs/{rel}": wav_bytes(0.1, 50 + i) for i, rel in enumerate(RIR_FILES)}
    rirs["RIRS_NOISES/simulated_rirs/smallroom/rir_list"] = b"--rir-id smallroom-Room001-00001 ...\n"
    real = "RIRS_NOISES/real_rirs_isotropic_noises"
    for i, (rir_id, channels) in enumerate(REAL_RIRS.items()):
        rirs[f"{real}/{rir_id}.wav"] = wav_bytes(0.1, 60 + i, channels)
    rirs[f"{real}/rir_list"] = "".join(f"--rir-id {rir_id} --room-id {rir_id} {real}/{rir_id}.wav\n"
                                       for rir_id in REAL_RIRS).encode()
    rirs["RIRS_NOISES/pointsource_noises/noise-free-sound-0001.wav"] = wav_bytes(0.2, 61)
    if extracted:
        for rel, data in {**musan, **rirs}.items():
            (archive_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (archive_dir / rel).write_bytes(data)
        return fake
    with tarfile.open(archive_dir / "musan.tar.gz", "w:gz") as tar:
        for rel, data in musan.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_zip(archive_dir / "rirs_noises.zip", rirs)
    for name in ("musan.tar.gz", "rirs_noises.zip"):
        _add_md5(fake, name)
    return fake


def copy_archives(src: FakeArchives, dst_dir: Path) -> FakeArchives:
    """A private copy, for tests that damage or delete files."""
    shutil.copytree(src.archive_dir, dst_dir)
    return FakeArchives(dst_dir, dst_dir / src.md5_file.name)
