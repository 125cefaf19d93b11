"""VoxCeleb preparation on fabricated archives with the official names, layout and formats."""
import hashlib
import io
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wespeaker_lap.data.archives import (
    VOX1_DEV,
    VOX1_TEST,
    VOX2_DEV,
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


def flip_byte(path: Path, at: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_archive_is_an_md5_error_naming_it(archives_copy, tmp_path):
    flip_byte(archives_copy.archive_dir / "vox1_dev_wav_partab")
    parts = [archives_copy.archive_dir / name for name in VOX1_DEV.parts]
    actual = hashlib.md5(b"".join(p.read_bytes() for p in parts)).hexdigest()
    expected = read_md5_file(archives_copy.md5_file)["vox1_dev_wav.zip"]
    # the user's table gives the joined archive's sum only: the joined parts are checked
    with pytest.raises(DataError, match=f"vox1_dev_wav.zip \\(its 4 parts joined in .*md5 is {actual}, "
                                        f"expected {expected} \\(from --md5_file\\).*list the parts' sums"):
        prepare_voxceleb(archive_dir(archives_copy), tmp_path / "data")
    assert not (tmp_path / "data" / "raw_data" / "voxceleb1").exists()  # nothing extracted
    # --skip_md5 lets it through
    assert archive_dir(archives_copy, skip_md5=True).verified(VOX1_DEV) == parts


@pytest.mark.parametrize("part", ["vox1_dev_wav_partab", "vox2_dev_aac_partah"])
def test_a_flipped_byte_in_one_part_names_that_part_alone(archives_copy, tmp_path, part):
    sums = read_md5_file(fake.part_md5_file(archives_copy, tmp_path / "parts.md5"))
    assert "vox2_dev_aac_partac" in sums and "vox2_dev_aac.zip" not in sums
    archives = ArchiveDir(archives_copy.archive_dir, md5=sums)
    assert archives.verified(VOX2_DEV) == [archives_copy.archive_dir / p for p in VOX2_DEV.parts]  # all fine
    flip_byte(archives_copy.archive_dir / part, at=100)
    archive = VOX1_DEV if part.startswith("vox1") else VOX2_DEV
    with pytest.raises(DataError) as error:
        archives.verified(archive)
    message = str(error.value)
    actual = hashlib.md5((archives_copy.archive_dir / part).read_bytes()).hexdigest()
    assert f"1 of the {len(archive.parts)} parts of {archive.name} failed the md5 check" in message
    assert f"  {part}: md5 is {actual}, expected {sums[part]} (from --md5_file)" in message
    assert "Download the part above again" in message
    assert [p for p in archive.parts if p in message] == [part]  # the good parts are not named


def test_parts_are_checked_against_the_published_part_sums(archives_copy):
    archives = ArchiveDir(archives_copy.archive_dir)  # no user table: the published sums of the parts
    with pytest.raises(DataError) as error:
        archives.verified(VOX1_DEV)
    message = str(error.value)
    assert "4 of the 4 parts of vox1_dev_wav.zip failed" in message
    for part, published in [("vox1_dev_wav_partaa", "e395d020928bc15670b570a21695ed96"),
                            ("vox1_dev_wav_partad", "7bb1e9f70fddc7a678fa998ea8b3ba19")]:
        assert f"{part}: md5 is " in message and f"expected {published} (published)" in message
    assert "Download the parts above again" in message


def test_md5_table_may_mix_parts_and_whole_archives(archives_copy, tmp_path):
    parts = read_md5_file(fake.part_md5_file(archives_copy, tmp_path / "parts.md5"))
    whole = read_md5_file(archives_copy.md5_file)
    table = tmp_path / "mixed.txt"  # voxceleb_trainer's '<url> <md5>' lines for vox1 dev, md5sum lines else
    table.write_text("".join(f"http://host/vox1a/{name} {parts[name]}\n" for name in VOX1_DEV.parts)
                     + f"{whole['vox2_dev_aac.zip']}  vox2_dev_aac.zip\n")
    archives = ArchiveDir(archives_copy.archive_dir, md5=read_md5_file(table))
    flip_byte(archives_copy.archive_dir / "vox1_dev_wav_partac")
    flip_byte(archives_copy.archive_dir / "vox2_dev_aac_partab")
    with pytest.raises(DataError, match=r"1 of the 4 parts of vox1_dev_wav.zip failed.*\n  vox1_dev_wav_partac"):
        archives.verified(VOX1_DEV)
    with pytest.raises(DataError, match=r"vox2_dev_aac.zip \(its 8 parts joined in .*from --md5_file"):
        archives.verified(VOX2_DEV)


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


def test_every_file_is_tried_and_the_failures_are_listed(tmp_path):
    src, dst = tmp_path / "m4a", tmp_path / "wav"
    keys = ["id00001/vid/00001", "id00001/vid/00002", "id00002/vid/00001"]
    for i, key in enumerate(keys):
        (src / f"{key}.m4a").parent.mkdir(parents=True, exist_ok=True)
        (src / f"{key}.m4a").write_bytes(b"this is not an mp4 file" * 10 if i == 1 else fake.m4a_bytes(0.3, i))
    failures = tmp_path / "failed.txt"
    result = convert_m4a_tree(src, dst, nj=2, failures_file=failures)
    assert result.converted == 2 and list(result.failed) == [keys[1]]
    assert "ffmpeg failed" in result.failed[keys[1]]
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == \
        [f"{keys[0]}.wav", f"{keys[2]}.wav"]  # the ones after the bad file too; no temp file left
    assert failures.read_text().startswith(f"{keys[1]} {src / keys[1]}.m4a: ffmpeg failed")
    (src / f"{keys[1]}.m4a").write_bytes(fake.m4a_bytes(0.3, 1))  # fixed: a rerun converts it, list removed
    assert convert_m4a_tree(src, dst, nj=1, failures_file=failures).failed == {}
    assert (dst / f"{keys[1]}.wav").is_file() and not failures.exists()


def test_bad_m4a_stops_preparation_with_the_list_unless_skipped(tmp_path, caplog):
    archives = fake.make_fake_voxceleb(tmp_path / "archives", bad_m4a=True)
    data = tmp_path / "data"
    listed = data / "raw_data" / "voxceleb2_failed_conversions.txt"
    with pytest.raises(PrepareError, match=rf"1 of 4 VoxCeleb2 files would not convert .*{fake.BAD_VOX2}.*"
                                           rf"listed in {re.escape(str(listed))}.*--skip_failed_conversions"):
        prepare_voxceleb(archive_dir(archives), data, nj=2)
    assert listed.read_text().startswith(f"{fake.BAD_VOX2} ")
    converted = sorted((data / "raw_data" / "voxceleb2_wav").rglob("*.wav"))
    assert len(converted) == 3
    mtimes = [p.stat().st_mtime_ns for p in converted]
    with caplog.at_level(logging.WARNING):
        steps = prepare_voxceleb(archive_dir(archives), data, nj=2, skip_failed_conversions=True)
    assert steps == ["convert_vox2_dev", "lists_vox1", "lists_vox2_dev", "trials_vox1"]
    assert [p.stat().st_mtime_ns for p in converted] == mtimes  # the converted files were kept
    assert set(load_data_dir(data / "vox2_dev").wav_scp) == set(fake.VOX2_DEV)  # the bad one left out
    assert (data / "raw_data" / "voxceleb2_failed_m4a" / f"{fake.BAD_VOX2}.m4a").is_file()
    messages = [r.getMessage() for r in caplog.records]
    assert any("left out 1 of 4 VoxCeleb2 files" in m for m in messages)
    assert any("vox2_dev: 1 utterances left out" in m for m in messages)


FFMPEG_THAT_HANGS = """#!/bin/bash
# the third call writes half a wav to its output, then hangs until killed
calls=$(( $(cat "{state}/calls" 2>/dev/null || echo 0) + 1 )); echo $calls > "{state}/calls"
if [ $calls -eq 3 ]; then
  out="${{@: -1}}"; head -c 3000 "{half}" > "$out"; touch "{state}/hanging"; sleep 600
fi
exec {ffmpeg} "$@"
"""


def test_killed_conversion_resumes_keeping_converted_files(tmp_path):
    src, dst, state = tmp_path / "m4a", tmp_path / "wav", tmp_path / "state"
    state.mkdir()
    keys = [f"id00001/vid/{i:05d}" for i in range(1, 6)]
    for i, key in enumerate(keys):
        (src / f"{key}.m4a").parent.mkdir(parents=True, exist_ok=True)
        (src / f"{key}.m4a").write_bytes(fake.m4a_bytes(0.5, i))
    (tmp_path / "half.wav").write_bytes(fake.wav_bytes(1.0, 0))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").write_text(FFMPEG_THAT_HANGS.format(state=state, half=tmp_path / "half.wav",
                                                             ffmpeg=shutil.which("ffmpeg")))
    (bin_dir / "ffmpeg").chmod(0o755)
    code = f"from wespeaker_lap.data.voxceleb import convert_m4a_tree; convert_m4a_tree({str(src)!r}, {str(dst)!r})"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if (state / "hanging").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert (state / "hanging").exists(), "the conversion did not reach the third file"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wavs = sorted(dst.rglob("*.wav"))
    assert [p.relative_to(dst).as_posix() for p in wavs] == [f"{k}.wav" for k in keys[:2]]  # not the half one
    assert list(dst.rglob(".*.tmp"))  # the half-written file has only its temporary name
    mtimes = [p.stat().st_mtime_ns for p in wavs]
    assert convert_m4a_tree(src, dst, nj=1).failed == {}
    assert [p.stat().st_mtime_ns for p in wavs] == mtimes
    assert not list(dst.rglob(".*.tmp"))
    for key in keys:
        assert sf.info(str(dst / f"{key}.wav")).frames == pytest.approx(8000, abs=1100)


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
