"""VoxCeleb preparation on fabricated archives with the official names, layout and formats."""
import hashlib
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wespeaker_lap.data.archives import (
    VOX1_DEV,
    VOX1_TEST,
    Archive,
    ArchiveDir,
    PrepareError,
    extract_archive,
    open_parts,
    read_md5_file,
)
from wespeaker_lap.data.kaldi import DataError, load_data_dir, read_list_map, read_scp, read_trials
from wespeaker_lap.data.voxceleb import TRIAL_LISTS, convert_m4a_tree, convert_trials, prepare_voxceleb

from . import fake_archives as fake

REPO = Path(__file__).resolve().parents[2]
ALL_STEPS = ["extract_vox1_dev", "extract_vox1_test", "extract_vox2_dev", "convert_vox2_dev", "lists_vox1",
             "lists_vox2_dev", "trials_vox1"]

@pytest.fixture(scope="module")
def vox_archives(tmp_path_factory):
    return fake.make_fake_voxceleb(tmp_path_factory.mktemp("vox") / "archives")


@pytest.fixture
def archives_copy(vox_archives, tmp_path):
    return fake.copy_archives(vox_archives, tmp_path / "archives")


def archive_dir(fake_archives, **options):
    return ArchiveDir(fake_archives.archive_dir, md5=read_md5_file(fake_archives.md5_file), **options)


@pytest.fixture(scope="module")
def prepared(vox_archives, tmp_path_factory):
    data = tmp_path_factory.mktemp("prepared") / "data"
    steps = prepare_voxceleb(archive_dir(vox_archives), data, nj=2)
    return data, steps


def test_happy_path_writes_sorted_kaldi_dirs(prepared):
    data, steps = prepared
    assert steps == ALL_STEPS
    expected = {"vox1_dev": fake.VOX1_DEV, "vox1": {**fake.VOX1_DEV, **fake.VOX1_TEST}, "vox2_dev": fake.VOX2_DEV}
    for name, utts in expected.items():
        data_dir = load_data_dir(data / name)
        assert set(data_dir.wav_scp) == set(utts)
        assert data_dir.utt2spk == {key: key.split("/")[0] for key in utts}
        assert read_list_map(data / name / "spk2utt") == data_dir.spk2utt
        for file in ("wav.scp", "utt2spk", "spk2utt", "utt2dur"):
            keys = [line.split()[0].encode() for line in (data / name / file).read_text().splitlines()]
            assert keys == sorted(keys), f"{name}/{file} is not in C-locale order"
        assert all(Path(path).is_absolute() and Path(path).is_file() for path in data_dir.wav_scp.values())
        tolerance = 0.05 if name == "vox2_dev" else 1e-4  # AAC frames pad the m4a a little
        for key, seconds in utts.items():
            assert data_dir.utt2dur[key] == pytest.approx(seconds, abs=tolerance), key


def test_vox2_is_converted_to_16k_mono_pcm16(prepared):
    data, _ = prepared
    wav_scp = read_scp(data / "vox2_dev" / "wav.scp")
    assert not (data / "raw_data" / "voxceleb2_m4a").exists()  # removed once converted (no --keep_m4a)
    seeds = {key: 7 + i for i, key in enumerate(fake.VOX2_DEV)}  # the builder's seeds after the 7 vox1 files
    for key, path in wav_scp.items():
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio, _ = sf.read(path)
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.argmax(spectrum) * 16000 / len(audio)
        assert peak_hz == pytest.approx(200 + 37 * seeds[key], abs=3), key  # the tone survived the conversion


def test_trials_are_converted_to_kaldi_form(prepared):
    data, _ = prepared
    for condition, name in {"O": "veri_test2.txt", "E": "list_test_all2.txt", "H": "list_test_hard2.txt"}.items():
        got = read_trials(data / "vox1" / "trials" / f"vox1_{condition}_cleaned.kaldi")
        assert got == [(enroll, test, label) for label, enroll, test in fake.TRIALS[name]]
        assert TRIAL_LISTS[condition].name == name


def test_rerun_does_no_work_and_resumes_a_removed_step(archives_copy, tmp_path):
    data, archives = tmp_path / "data", archive_dir(archives_copy)
    assert prepare_voxceleb(archives, data, nj=1) == ALL_STEPS
    outputs = sorted(p for p in data.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    shutil.rmtree(archives_copy.archive_dir)  # finished steps must not even look at the archives
    assert prepare_voxceleb(archives, data, nj=1) == []
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes
    (data / ".done_lists_vox2_dev").unlink()
    assert prepare_voxceleb(archives, data, nj=1) == ["lists_vox2_dev"]


def test_corrupted_archive_is_an_md5_error_naming_it(archives_copy, tmp_path):
    part = archives_copy.archive_dir / "vox1_dev_wav_partab"
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    parts = [archives_copy.archive_dir / name for name in VOX1_DEV.parts]
    actual = hashlib.md5(b"".join(p.read_bytes() for p in parts)).hexdigest()
    expected = read_md5_file(archives_copy.md5_file)["vox1_dev_wav.zip"]
    with pytest.raises(DataError, match=f"vox1_dev_wav.zip .*md5 is {actual}, expected {expected}"):
        prepare_voxceleb(archive_dir(archives_copy), tmp_path / "data")
    assert not (tmp_path / "data" / "raw_data" / "voxceleb1").exists()  # nothing extracted
    # --skip_md5 lets it through
    assert archive_dir(archives_copy, skip_md5=True).verified(VOX1_DEV) == parts


def test_missing_files_are_all_named_before_any_work(archives_copy, tmp_path):
    (archives_copy.archive_dir / "vox2_dev_aac_partah").unlink()
    (archives_copy.archive_dir / "list_test_hard2.txt").unlink()
    vox2 = r"vox2_dev_aac.zip \(or its parts vox2_dev_aac_partaa \.\. vox2_dev_aac_partah\)"
    with pytest.raises(DataError, match=rf"missing archive files:\n  {vox2}\n  list_test_hard2.txt"):
        prepare_voxceleb(archive_dir(archives_copy), tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_missing_ffmpeg_says_how_to_install_it(archives_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PrepareError, match=r"apt-get install ffmpeg"):
        prepare_voxceleb(archive_dir(archives_copy), tmp_path / "data")
    assert not (tmp_path / "data").exists()  # checked before any extraction


def test_trial_naming_unknown_utterance_is_an_error_naming_the_line(prepared, tmp_path):
    data, _ = prepared
    known = read_scp(data / "vox1" / "wav.scp")
    trials = tmp_path / "list_test_hard2.txt"
    trials.write_text("1 id10270/x6uYqmx31kE/00001.wav id10270/5r0dWxy17C8/00001.wav\n"
                      "0 id10001/1zcIwhmdeo4/00001.wav id10003/nonexistent/00009.wav\n")
    with pytest.raises(DataError, match=r"list_test_hard2.txt:2: utterance 'id10003/nonexistent/00009' is not in"):
        convert_trials(trials, tmp_path / "out.kaldi", known)
    trials.write_text("target id10270/x6uYqmx31kE/00001.wav id10270/5r0dWxy17C8/00001.wav\n")
    with pytest.raises(DataError, match=r"list_test_hard2.txt:1: expected '<1\|0> <enroll>.wav <test>.wav'"):
        convert_trials(trials, tmp_path / "out.kaldi", known)
    assert not (tmp_path / "out.kaldi").exists()


def test_md5_table_errors_and_unknown_archives(tmp_path):
    table = tmp_path / "sums.txt"
    table.write_text("185fdc63c3c739954633d50379a3d102  vox1_test_wav.zip\nnot-an-md5 vox1_dev_wav.zip\n")
    with pytest.raises(DataError, match=r"sums.txt:2: expected '<32 hex digits> <file name>'"):
        read_md5_file(table)
    table.write_text("185FDC63C3C739954633D50379A3D102 *some/dir/vox1_test_wav.zip\n")
    assert read_md5_file(table) == {"vox1_test_wav.zip": "185fdc63c3c739954633d50379a3d102"}
    (tmp_path / "extra.zip").write_bytes(b"x")
    with pytest.raises(DataError, match=r"extra.zip: no md5 known .*--md5_file .*--skip_md5"):
        ArchiveDir(tmp_path).verified(Archive("extra.zip"))


def test_concatenated_parts_read_like_the_joined_file(tmp_path):
    rng = random.Random(0)
    joined = bytes(rng.randrange(256) for _ in range(5000))
    cuts = [0, 1200, 1200, 3000, 5000]  # one empty part
    paths = []
    for i, (start, end) in enumerate(zip(cuts[:-1], cuts[1:])):
        paths.append(tmp_path / f"part{i}")
        paths[-1].write_bytes(joined[start:end])
    with open_parts(paths) as f:  # buffered, as zipfile and md5 read it
        assert f.read() == joined
        for _ in range(200):
            pos, size = rng.randrange(5100), rng.randrange(1, 3000)
            f.seek(pos)
            assert f.read(size) == joined[pos:pos + size]
        assert f.seek(-10, io.SEEK_END) == 4990 and f.read() == joined[-10:]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_extraction_refuses_path_traversal(tmp_path, kind):
    archive = tmp_path / f"evil.{kind}"
    members = {"good/a.txt": b"fine", "good/../../evil.txt": b"gotcha"}
    if kind == "zip":
        fake.write_zip(archive, members)
    else:
        with tarfile.open(archive, "w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"evil\.(zip|tar): unsafe member path 'good/\.\./"):
        extract_archive([archive], tmp_path / "out", archive.name)
    assert not (tmp_path / "evil.txt").exists()


def test_extraction_resumes_and_reads_multi_part_zips(tmp_path):
    archive = tmp_path / "a.zip"
    members = {f"wav/id1/v/{i:05d}.wav": fake.wav_bytes(0.1, i) for i in range(5)}
    fake.write_zip(archive, members)
    fake.split_into_parts(archive, ["a_partaa", "a_partab", "a_partac"])
    parts = [tmp_path / f"a_parta{c}" for c in "abc"]
    out = tmp_path / "out"
    extract_archive(parts, out, "a.zip", nj=2)
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.wav")} == members
    kept = out / "wav/id1/v/00000.wav"
    before = kept.stat().st_mtime_ns
    (out / "wav/id1/v/00004.wav").unlink()  # as if interrupted
    extract_archive(parts, out, "a.zip", nj=1)
    assert (out / "wav/id1/v/00004.wav").read_bytes() == members["wav/id1/v/00004.wav"]
    assert kept.stat().st_mtime_ns == before  # already there: not rewritten


def test_failed_conversion_names_the_file(tmp_path):
    bad = tmp_path / "m4a" / "id00001" / "vid" / "00001.m4a"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not an mp4 file" * 10)
    with pytest.raises(PrepareError, match=r"00001.m4a: ffmpeg failed"):
        convert_m4a_tree(tmp_path / "m4a", tmp_path / "wav", nj=1)
    assert not any(p.is_file() for p in (tmp_path / "wav").rglob("*"))  # no half-written wav, no temp file


def test_download_fetches_only_missing_files(vox_archives, tmp_path):
    target = tmp_path / "archives"
    target.mkdir()
    (target / "vox1_test_wav.zip").write_bytes(b"mine")  # present: must not be replaced
    bases = [f"file://{tmp_path}/nowhere", f"file://{vox_archives.archive_dir}"]
    archives = ArchiveDir(target, url_bases=bases)
    archives.require([VOX1_DEV, VOX1_TEST, TRIAL_LISTS["O"]])
    for name in VOX1_DEV.parts + ("veri_test2.txt",):
        assert (target / name).read_bytes() == (vox_archives.archive_dir / name).read_bytes()
    assert (target / "vox1_test_wav.zip").read_bytes() == b"mine"
    with pytest.raises(DataError, match=r"missing archive files:\n  not_there.txt\nDownloading failed"):
        archives.require([Archive("not_there.txt")])


def test_stage_script_prepares_everything(vox_archives, tmp_path):
    archives = fake.copy_archives(vox_archives, tmp_path / "archives")
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "wespeaker_lap.bin.prepare_voxceleb", "--archive_dir", str(archives.archive_dir),
           "--nj", "2", "--md5_file", str(archives.md5_file), "--data_dir", str(data)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in ("vox2_dev/utt2dur", "vox1_dev/spk2utt", "vox1/trials/vox1_E_cleaned.kaldi",
                 "log/prepare_voxceleb.log"):  # musan.list and rirs.list are made in stage 2
        assert (data / path).is_file(), path
    for archive_dir, message in [(tmp_path / "nowhere", "prepare_voxceleb: error: archive folder .*nowhere not found"),
                                 (tmp_path / "empty", "prepare_voxceleb: error: .*missing archive files")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        cmd[4], cmd[-1] = str(archive_dir), str(tmp_path / "fresh_data")
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert result.returncode == 1
        assert re.search(message, result.stderr) and "vox2_dev_aac_partaa .. vox2_dev_aac_partah" in result.stderr
