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
    list_rirs,
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
RIR_KEYS = {**{rel.removesuffix(".wav"): room for rel, room in fake.RIR_FILES.items()},
            **{f"real/{rir_id}": "real" for rir_id in fake.REAL_RIRS}}


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
    assert {e.key: e.type for e in rirs} == RIR_KEYS  # the official pool: real RIRs and every room size
    assert all(Path(e.path).is_absolute() for e in musan + rirs)


def test_rerun_skips_and_option_changes_redo_only_their_list(augment_archives, tmp_path):
    data, archives = tmp_path / "data", archive_dir(augment_archives)
    prepare_augment(archives, data, rir_sets=("smallroom", "mediumroom"))
    assert {e.type for e in read_augment_list(data / "rirs.list")} == {"smallroom", "mediumroom"}
    mtime = (data / "musan.list").stat().st_mtime_ns
    assert prepare_augment(archives, data, rir_sets=("smallroom", "mediumroom")) == []
    assert prepare_augment(archives, data) == ["list_rirs"]
    assert {e.type for e in read_augment_list(data / "rirs.list")} == set(RIR_TYPES)
    assert (data / "musan.list").stat().st_mtime_ns == mtime
    assert prepare_augment(archives, data, chunk_s=4.0) == ["list_musan"]
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
    wav, spaced = tmp_path / "a.wav", tmp_path / "my  data" / "b c.wav"  # a path may hold spaces
    spaced.parent.mkdir()
    for path in (wav, spaced):
        path.write_bytes(fake.wav_bytes(0.1, 0))
    entries = [AugmentEntry("b", str(wav), "noise"), AugmentEntry("a", str(wav), "mediumroom"),
               AugmentEntry("c", str(spaced), "music")]
    write_augment_list(tmp_path / "x.list", entries)
    assert read_augment_list(tmp_path / "x.list") == sorted(entries)
    for bad in (AugmentEntry("a b", str(wav), "noise"), AugmentEntry("a", f"{wav}\n", "noise"),
                AugmentEntry("a", f" {wav}", "noise")):
        with pytest.raises(DataError, match="cannot write"):
            write_augment_list(tmp_path / "bad.list", [bad])
    (tmp_path / "empty.list").write_text("\n")
    with pytest.raises(DataError, match=r"empty.list: no entries"):
        read_augment_list(tmp_path / "empty.list")


# ----------------------------------------------------------------------------- the RIR pool


def _rirs_noises(root: Path, rir_list: str) -> Path:
    """A fabricated RIRS_NOISES tree: two real RIRs (one 2-channel), two simulated rooms, a rir_list."""
    real = root / "RIRS_NOISES" / "real_rirs_isotropic_noises"
    real.mkdir(parents=True)
    (real / "air_mono.wav").write_bytes(fake.wav_bytes(0.05, 1))
    (real / "RVB_stereo.wav").write_bytes(fake.wav_bytes(0.05, 2, channels=2))
    (real / "rir_list").write_text(rir_list)
    for room in RIR_TYPES[1:]:
        wav = root / "RIRS_NOISES" / "simulated_rirs" / room / "Room001" / "Room001-00001.wav"
        wav.parent.mkdir(parents=True)
        wav.write_bytes(fake.wav_bytes(0.05, 3))
    return root / "RIRS_NOISES"


REAL_LIST = ("--rir-id air_mono --room-id air_mono RIRS_NOISES/real_rirs_isotropic_noises/air_mono.wav\n"
             "--rir-id RVB_stereo --room-id RVB_room RIRS_NOISES/real_rirs_isotropic_noises/RVB_stereo.wav\n"
             "\n"
             "--rir-id air_mono --room-id air_mono RIRS_NOISES/real_rirs_isotropic_noises/air_mono.wav\n")


def test_real_rirs_come_from_their_rir_list(tmp_path):
    root = _rirs_noises(tmp_path, REAL_LIST)
    entries = list_rirs(root)
    assert [(e.key, e.type) for e in entries] == [
        ("real/air_mono", "real"), ("real/RVB_stereo", "real"), ("real/air_mono-2", "real"),  # listed twice: kept twice
        ("smallroom/Room001/Room001-00001", "smallroom"), ("mediumroom/Room001/Room001-00001", "mediumroom"),
        ("largeroom/Room001/Room001-00001", "largeroom")]
    assert entries[1].path == str(root / "real_rirs_isotropic_noises" / "RVB_stereo.wav")  # relative to RIRS_NOISES/..
    write_augment_list(tmp_path / "rirs.list", entries)
    assert len(read_augment_list(tmp_path / "rirs.list", RIR_TYPES)) == 6


@pytest.mark.parametrize("line, message", [
    ("RIRS_NOISES/real_rirs_isotropic_noises/air_mono.wav", r"rir_list:2: expected '--rir-id <id> \.\.\. <path>.wav'"),
    ("--rir-id gone --room-id gone RIRS_NOISES/real_rirs_isotropic_noises/gone.wav",
     r"rir_list:2: .*gone.wav not found"),
])
def test_bad_rir_list_lines_are_named(tmp_path, line, message):
    root = _rirs_noises(tmp_path, REAL_LIST.splitlines(keepends=True)[0] + line + "\n")
    with pytest.raises(DataError, match=message):
        list_rirs(root)


def test_missing_rir_list_is_named(tmp_path):
    root = _rirs_noises(tmp_path, "")
    (root / "real_rirs_isotropic_noises" / "rir_list").unlink()
    with pytest.raises(DataError, match=r"real_rirs_isotropic_noises/rir_list: not found"):
        list_rirs(root)
    assert {e.type for e in list_rirs(root, sets=("smallroom",))} == {"smallroom"}


def test_reverb_draws_every_listed_rir_uniformly_and_either_channel(tmp_path, monkeypatch):
    """As the official code: one uniform draw over the whole list, then a uniform channel."""
    import numpy as np

    import wespeaker_lap.data.augment as augment
    from wespeaker_lap.data.audio import BadAudioHandler

    root = _rirs_noises(tmp_path, REAL_LIST)
    entries = list_rirs(root)
    drawn, channels = [], []
    real_read = augment._read_rir

    def spy(key, path, sample_rate):
        rir = real_read(key, path, sample_rate)
        drawn.append(key)
        if rir.shape[1] == 2:  # make the channels tell apart: channel 1 is silent but for one late tap
            rir = rir.copy()
            rir[:, 1] = 0.0
            rir[-1, 1] = 1.0
        return rir

    monkeypatch.setattr(augment, "_read_rir", spy)
    augmenter = augment.Augmenter({}, [(e.key, e.path) for e in entries], {}, (4, 7), 16000, BadAudioHandler("error"))
    rng = np.random.default_rng(0)
    wav = np.random.default_rng(1).standard_normal(2000).astype(np.float32)
    for _ in range(600):
        out = augmenter.reverb(wav, rng)
        if drawn[-1] == "real/RVB_stereo":
            channels.append(bool(np.abs(out[:799]).max() < 1e-4))  # channel 1: nothing before its late tap
    counts = {key: drawn.count(key) for key in {e.key for e in entries}}
    assert all(abs(counts[e.key] - 100) < 40 for e in entries if e.key != "real/air_mono")  # 1/6 each
    assert abs(counts["real/air_mono"] + counts["real/air_mono-2"] - 200) < 55  # listed twice: drawn twice as often
    assert 0.3 < np.mean(channels) < 0.7
