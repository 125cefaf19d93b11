"""``utils.ark``: ark/scp pairs that kaldiio reads, recovered after a kill, and a full disk named."""
from __future__ import annotations

import os

import kaldiio
import numpy as np
import pytest

from wespeaker_lap.utils.ark import ArkWriter, recover_ark
from wespeaker_lap.utils.errors import DiskFullError

DIM = 6


def vectors(n: int, start: int = 0):
    return [(f"spk{i % 3}/utt{i:03d}", np.arange(DIM, dtype=np.float32) + 10 * i) for i in range(start, start + n)]


def write_pair(tmp_path, groups):
    ark, scp = tmp_path / "x.ark", tmp_path / "x.scp"
    with ArkWriter(ark, scp) as writer:
        for group in groups:
            writer.write(group)
    return ark, scp


def loaded(scp):
    return {key: value for key, value in kaldiio.load_scp(str(scp)).items()}


def test_writer_output_is_what_kaldiio_writes_and_reads(tmp_path):
    entries = vectors(5)
    ark, scp = write_pair(tmp_path, [entries[:2], entries[2:]])
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path / 'k.ark'},{tmp_path / 'k.scp'}") as helper:
        for key, vector in entries:
            helper(key, vector)
    assert ark.read_bytes() == (tmp_path / "k.ark").read_bytes()
    assert scp.read_text() == (tmp_path / "k.scp").read_text().replace("k.ark", "x.ark")
    for key, vector in entries:
        np.testing.assert_array_equal(loaded(scp)[key], vector)


def test_recover_keeps_a_complete_pair_and_appending_continues_it(tmp_path):
    ark, scp = write_pair(tmp_path, [vectors(3)])
    before = ark.read_bytes(), scp.read_text()
    assert recover_ark(ark, scp) == [key for key, _ in vectors(3)]
    assert (ark.read_bytes(), scp.read_text()) == before
    with ArkWriter(ark, scp, append=True) as writer:
        writer.write(vectors(2, start=3))
    reference = tmp_path / "reference"
    reference.mkdir()
    one_go_ark, one_go_scp = write_pair(reference, [vectors(5)])
    assert ark.read_bytes() == one_go_ark.read_bytes()
    assert scp.read_text() == one_go_scp.read_text().replace(str(reference), str(tmp_path))


@pytest.mark.parametrize("damage", ["truncated entry", "line past the end", "partial line", "ark bytes without line",
                                    "garbage line", "other ark", "duplicate key"])
def test_recover_drops_a_damaged_tail_and_keeps_the_rest(tmp_path, damage):
    entries = vectors(4)
    ark, scp = write_pair(tmp_path, [entries[:3]])
    good_ark, good_scp = ark.read_bytes(), scp.read_text()
    with ArkWriter(tmp_path / "extra.ark", tmp_path / "extra.scp") as writer:  # what the 4th write would add
        writer.write(entries[3:])
    entry = (tmp_path / "extra.ark").read_bytes()
    line = f"{entries[3][0]} {ark}:{len(good_ark) + len(entries[3][0]) + 1}\n"
    if damage == "truncated entry":  # a kill in the middle of the ark write, after a (later) scp line
        ark.write_bytes(good_ark + entry[:-7])
        scp.write_text(good_scp + line)
    elif damage == "line past the end":  # the scp line reached the disk, the ark bytes did not
        scp.write_text(good_scp + line)
    elif damage == "partial line":
        ark.write_bytes(good_ark + entry)
        scp.write_text(good_scp + line[:-5])
    elif damage == "ark bytes without line":
        ark.write_bytes(good_ark + entry)
    elif damage == "garbage line":
        ark.write_bytes(good_ark + entry)
        scp.write_text(good_scp + "not an scp line\n" + line)
    elif damage == "other ark":
        ark.write_bytes(good_ark + entry)
        scp.write_text(good_scp + line.replace(str(ark), str(tmp_path / "extra.ark")))
    elif damage == "duplicate key":
        ark.write_bytes(good_ark + entry)
        scp.write_text(good_scp + line.replace(entries[3][0], entries[0][0]))
    assert recover_ark(ark, scp) == [key for key, _ in entries[:3]]
    assert ark.read_bytes() == good_ark and scp.read_text() == good_scp
    with ArkWriter(ark, scp, append=True) as writer:  # the tail is written again, once
        writer.write(entries[3:])
    values = loaded(scp)
    assert list(values) == [key for key, _ in entries]
    for key, vector in entries:
        np.testing.assert_array_equal(values[key], vector)
    assert len(list(kaldiio.load_ark(str(ark)))) == len(entries)


def test_recover_drops_an_entry_whose_header_is_not_a_float_vector(tmp_path):
    ark, scp = write_pair(tmp_path, [vectors(2)])
    data = bytearray(ark.read_bytes())
    second = scp.read_text().splitlines()[1]
    offset = int(second.rsplit(":", 1)[1])
    data[offset + 2:offset + 4] = b"DV"  # a double vector: not what the writer writes
    ark.write_bytes(bytes(data))
    assert recover_ark(ark, scp) == [vectors(1)[0][0]]
    assert ark.stat().st_size == offset - len(second.split()[0]) - 1


def test_recover_of_missing_files_is_an_empty_shard(tmp_path):
    assert recover_ark(tmp_path / "none.ark", tmp_path / "none.scp") == []
    assert (tmp_path / "none.scp").read_text() == ""


def test_scp_may_name_a_final_ark(tmp_path):
    with ArkWriter(tmp_path / ".tmp.ark", tmp_path / "x.scp", ark_name=str(tmp_path / "x.ark")) as writer:
        writer.write(vectors(2))
    os.replace(tmp_path / ".tmp.ark", tmp_path / "x.ark")
    np.testing.assert_array_equal(loaded(tmp_path / "x.scp")[vectors(2)[1][0]], vectors(2)[1][1])


def test_writer_refuses_what_it_cannot_write(tmp_path):
    from wespeaker_lap.data.kaldi import DataError

    for bad in ("|cat", "x.ark |"):
        with pytest.raises(DataError, match="may not start or end with '|'"):
            ArkWriter(tmp_path / "x.ark", tmp_path / "x.scp", ark_name=bad)
    with ArkWriter(tmp_path / "x.ark", tmp_path / "x.scp") as writer:
        with pytest.raises(ValueError, match="key without whitespace and a 1-D vector"):
            writer.write([("a b", np.zeros(3))])
        with pytest.raises(ValueError, match="shape \\(2, 3\\)"):
            writer.write([("a", np.zeros((2, 3)))])


def test_a_full_disk_names_the_ark_and_writes_no_scp_line(tmp_path):
    """/dev/full fails every write with ENOSPC, as a full file system does."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    writer = ArkWriter("/dev/full", tmp_path / "x.scp")
    with pytest.raises(DiskFullError, match="^/dev/full: no space left on device while writing it$"):
        writer.write(vectors(2))
    writer.close(sync=False)
    assert (tmp_path / "x.scp").read_text() == ""  # no line names bytes that were not written
