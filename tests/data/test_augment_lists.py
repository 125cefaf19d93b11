"""MUSAN and RIRS_NOISES lists on fabricated archives with the official layout."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wespeaker_lap.data.archives import ArchiveDir, read_md5_file
from wespeaker_lap.data.augment_lists import (
    MUSAN_TYPES,
    RIR_TYPES,
    AugmentEntry,
    prepare_augment,
    read_augment_list,
    write_augment_list,
)
from wespeaker_lap.data.kaldi import DataError

from . import fake_archives as fake

# windows (5 s every 3 s) of the fabricated MUSAN files; the 4 s noise file has none
MUSAN_KEYS = {"music/fma/music-fma-0000/0000": "music", "music/fma/music-fma-0000/0001": "music",
              "music/fma/music-fma-0000/0002": "music", "noise/free-sound/noise-free-sound-0001/0000": "noise",
              "speech/librivox/speech-librivox-0000/0000": "speech",
              "speech/librivox/speech-librivox-0000/0001": "speech"}
RIR_KEYS = {rel.removesuffix(".wav"): room for rel, room in fake.RIR_FILES.items()}


@pytest.fixture(scope="module")
def augment_archives(tmp_path_factory):
    return fake.make_fake_musan_rirs(tmp_path_factory.mktemp("augment") / "archives")


def archive_dir(fake_archives, **options):
    return ArchiveDir(fake_archives.archive_dir, md5=read_md5_file(fake_archives.md5_file), **options)


def test_lists_from_archives(augment_archives, tmp_path):
    data = tmp_path / "data"
    assert prepare_augment(archive_dir(augment_archives), data, nj=2) == [
        "extract_musan", "extract_rirs", "list_musan", "list_rirs"]
    musan = read_augment_list(data / "musan.list", MUSAN_TYPES)
    assert {e.key: e.type for e in musan} == MUSAN_KEYS
    assert [e.key for e in musan] == sorted(MUSAN_KEYS)
    source, _ = sf.read(data / "raw_data" / "musan" / "music" / "fma" / "music-fma-0000.wav", dtype="int16")
    for e in musan:
        audio, rate = sf.read(e.path, dtype="int16")
        assert rate == 16000 and len(audio) == 5 * 16000, e.key
        if e.type == "music":
            start = int(e.key[-4:]) * 3 * 16000
            assert np.array_equal(audio, source[start:start + 5 * 16000]), e.key
    rirs = read_augment_list(data / "rirs.list", RIR_TYPES)
    assert {e.key: e.type for e in rirs} == {k: v for k, v in RIR_KEYS.items() if v != "largeroom"}
    assert all(Path(e.path).is_absolute() for e in musan + rirs)


def test_rerun_skips_and_option_changes_redo_only_their_list(augment_archives, tmp_path):
    data, archives = tmp_path / "data", archive_dir(augment_archives)
    prepare_augment(archives, data)
    mtime = (data / "musan.list").stat().st_mtime_ns
    assert prepare_augment(archives, data) == []
    assert prepare_augment(archives, data, include_largeroom=True) == ["list_rirs"]
    assert {e.type for e in read_augment_list(data / "rirs.list")} == set(RIR_TYPES)
    assert (data / "musan.list").stat().st_mtime_ns == mtime
    assert prepare_augment(archives, data, include_largeroom=True, chunk_s=4.0) == ["list_musan"]
    musan = read_augment_list(data / "musan.list")
    assert len([e for e in musan if e.type == "noise"]) == 2  # the 4 s file now gives a window
    assert all(len(sf.read(e.path)[0]) == 4 * 16000 for e in musan)
    assert len(list((data / "raw_data" / "musan_split").rglob("*.wav"))) == len(musan)  # no stale windows


def test_extracted_folders_are_used_in_place(tmp_path):
    extracted = fake.make_fake_musan_rirs(tmp_path / "archives", extracted=True)
    data = tmp_path / "data"
    assert prepare_augment(ArchiveDir(extracted.archive_dir), data) == ["list_musan", "list_rirs"]
    rirs = read_augment_list(data / "rirs.list")
    assert all(Path(e.path).is_relative_to(tmp_path / "archives" / "RIRS_NOISES") for e in rirs)
    assert not (data / "raw_data" / "RIRS_NOISES").exists()


def test_corrupted_musan_is_an_md5_error(augment_archives, tmp_path):
    archives = fake.copy_archives(augment_archives, tmp_path / "archives")
    path = archives.archive_dir / "musan.tar.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"musan.tar.gz \(musan.tar.gz in .*\): md5 is [0-9a-f]{32}, expected"):
        prepare_augment(archive_dir(archives), tmp_path / "data")


def test_missing_archive_is_named(tmp_path):
    (tmp_path / "archives").mkdir()
    with pytest.raises(DataError, match=r"missing archive files:\n  musan.tar.gz\n  rirs_noises.zip"):
        prepare_augment(ArchiveDir(tmp_path / "archives"), tmp_path / "data")


@pytest.mark.parametrize("line, message", [
    ("k {wav}", r"aug.list:2: expected '<key> <path> <type>'"),
    ("k {wav} babble", r"aug.list:2: unknown type 'babble' \(allowed: music, noise, speech\)"),
    ("a {wav} noise", r"aug.list:2: duplicate key 'a'"),
    ("k {wav}.missing noise", r"aug.list:2: audio file .*missing not found"),
    ("k {wav} smallroom", r"aug.list:2: unknown type 'smallroom'"),
])
def test_read_augment_list_errors_name_file_and_line(tmp_path, line, message):
    wav = tmp_path / "a.wav"
    wav.write_bytes(fake.wav_bytes(0.1, 0))
    path = tmp_path / "aug.list"
    path.write_text(f"a {wav} music\n" + line.format(wav=wav) + "\n")
    with pytest.raises(DataError, match=message):
        read_augment_list(path, MUSAN_TYPES)


def test_augment_list_round_trip_and_empty(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(fake.wav_bytes(0.1, 0))
    entries = [AugmentEntry("b", str(wav), "noise"), AugmentEntry("a", str(wav), "mediumroom")]
    write_augment_list(tmp_path / "x.list", entries)
    assert read_augment_list(tmp_path / "x.list") == sorted(entries)
    (tmp_path / "empty.list").write_text("\n")
    with pytest.raises(DataError, match=r"empty.list: no entries"):
        read_augment_list(tmp_path / "empty.list")
