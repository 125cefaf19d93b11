"""Kaldi data-dir readers: round trips and errors naming file and line."""
import pytest

from wespeaker_lap.data.kaldi import (
    DataError,
    load_data_dir,
    read_map,
    read_scp,
    read_trials,
    utt2spk_to_spk2utt,
    write_map,
    write_trials,
)


def test_map_round_trip_sorted(tmp_path):
    path = tmp_path / "wav.scp"
    write_map(path, {"b": "/x/b.wav", "a": "/data/my corpus/a.wav"})
    assert path.read_text().splitlines()[0] == "a /data/my corpus/a.wav"
    assert read_scp(path) == {"a": "/data/my corpus/a.wav", "b": "/x/b.wav"}  # the rest of the line
    write_map(tmp_path / "utt2spk", {"b": "s1", "a": "s2"})
    assert read_map(tmp_path / "utt2spk") == {"a": "s2", "b": "s1"}


@pytest.mark.parametrize(
    "text, message",
    [("a 1.0\nb\n", r"utt2dur:2: expected"), ("a 1.0\na 2.0\n", r"utt2dur:2: duplicate key 'a'"),
     ("a 1.0\nb x\n", r"utt2dur:2: bad value for 'b'")],
)
def test_map_errors_name_line(tmp_path, text, message):
    path = tmp_path / "utt2dur"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_map(path, float)


def test_data_dir_consistency(tmp_path):
    write_map(tmp_path / "wav.scp", {"s1/u1": "a.wav", "s1/u2": "b.wav", "s2/u1": "c.wav"})
    write_map(tmp_path / "utt2spk", {"s1/u1": "s1", "s1/u2": "s1", "s2/u1": "s2"})
    data = load_data_dir(tmp_path)
    assert data.speakers == ["s1", "s2"] and data.spk2utt == {"s1": ["s1/u1", "s1/u2"], "s2": ["s2/u1"]}
    write_map(tmp_path / "utt2spk", {"s1/u1": "s1", "s1/u2": "s1"})
    with pytest.raises(DataError, match="no speaker for utterance 's2/u1'"):
        load_data_dir(tmp_path)


def test_trials(tmp_path):
    path = tmp_path / "trials"
    write_trials(path, [("a", "b", 1), ("a", "c", 0)])
    assert read_trials(path) == [("a", "b", 1), ("a", "c", 0)]
    path.write_text("a b target\na c maybe\n")
    with pytest.raises(DataError, match=r"trials:2: expected"):
        read_trials(path)


def test_spk2utt_inverts():
    assert utt2spk_to_spk2utt({"u2": "s", "u1": "s", "u3": "t"}) == {"s": ["u1", "u2"], "t": ["u3"]}
