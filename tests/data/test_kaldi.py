"""Kaldi data-dir readers: round trips and errors naming file and line."""
import pytest

from wespeaker_lap.data.kaldi import (
    DataError,
    is_pipe,
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


# ----------------------------------------------------------------------------- hardening
def test_non_utf8_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "utt2spk"
    path.write_bytes(b"a s1\nb caf\xe9\n")  # latin-1, not UTF-8
    with pytest.raises(DataError, match=r"utt2spk:2: not UTF-8 text \(byte 0xe9 at column 6\)"):
        read_map(path)


def test_a_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "wav.scp").write_bytes(b"\xef\xbb\xbfu1 /x/u1.wav\nu2 /x/u2.wav\n")
    (tmp_path / "utt2spk").write_bytes(b"\xef\xbb\xbfu1 s1\nu2 s1\n")
    data = load_data_dir(tmp_path)
    assert sorted(data.wav_scp) == ["u1", "u2"] and data.utt2spk == {"u1": "s1", "u2": "s1"}


@pytest.mark.parametrize("name, text", [("utt2spk", "u1 s1\nu2 fest_don extra\n"), ("utt2dur", "u1 1.0\nu2 2.0 3.0\n"),
                                        ("spk2gender", "s1 m\ns2 f f\n")])
def test_two_column_files_refuse_extra_columns(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=rf"{name}:2: expected '<key> <value>', got .* \(3 columns\)"):
        read_map(tmp_path / name, float if name == "utt2dur" else str)


def test_data_dir_refuses_extra_utt2spk_columns(tmp_path):
    write_map(tmp_path / "wav.scp", {"u1": "/data/my corpus/u1.wav"})  # a space in a wav.scp path is fine
    (tmp_path / "utt2spk").write_text("u1 fest_don extra\n")
    with pytest.raises(DataError, match=r"utt2spk:1: expected '<key> <value>'"):
        load_data_dir(tmp_path)


def test_empty_wav_scp_and_trials_are_errors(tmp_path):
    (tmp_path / "wav.scp").write_text("\n")
    (tmp_path / "utt2spk").write_text("")
    with pytest.raises(DataError, match=r"wav.scp: no utterances \(the file is empty\)"):
        load_data_dir(tmp_path, need_spk=False)
    (tmp_path / "trials").write_text("")
    with pytest.raises(DataError, match=r"trials: no trials \(the file is empty\)"):
        read_trials(tmp_path / "trials")


@pytest.mark.parametrize("spec", ["sox a.wav -t wav - |", "| cat a.wav", "touch x |:12", "cat a.ark |:12[0:3]",
                                  "  gunzip -c a.wav.gz |  "])
def test_pipe_entries_are_recognised_and_refused(tmp_path, spec):
    assert is_pipe(spec)
    write_map(tmp_path / "wav.scp", {"u1": spec})
    with pytest.raises(DataError, match=r"wav.scp: utterance 'u1': .* is a pipe command; wespeaker-lap does not run"):
        load_data_dir(tmp_path, need_spk=False)


@pytest.mark.parametrize("spec", ["/data/a.wav", "/data/my corpus/a.wav", "exp/xvector.ark:123", "a.ark:1[0:3]"])
def test_plain_entries_are_not_pipes(spec):
    assert not is_pipe(spec)
