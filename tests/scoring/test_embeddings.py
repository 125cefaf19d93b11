"""Reading kaldiio ark/scp embeddings and mapping trials to rows."""
import kaldiio
import numpy as np
import pytest

from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.scoring.embeddings import load_mean, read_embeddings

from .conftest import write_ark


def _vectors(n, dim=6, seed=0, prefix="u"):
    rng = np.random.default_rng(seed)
    return {f"{prefix}{i:03d}": rng.standard_normal(dim).astype(np.float32) for i in range(n)}


def test_round_trip_matches_kaldiio_random_access(tmp_path):
    vectors = _vectors(30)
    scp = write_ark(tmp_path, "emb", vectors)
    emb = read_embeddings(scp, progress=False)
    assert emb.keys == list(vectors)
    assert emb.matrix.dtype == np.float32 and emb.matrix.shape == (30, 6)
    specifiers = dict(line.split() for line in scp.read_text().splitlines())
    for key, row in zip(emb.keys, emb.matrix):
        np.testing.assert_array_equal(row, kaldiio.load_mat(specifiers[key]))


def test_scp_order_subsets_and_several_arks(tmp_path):
    first, second = _vectors(10, seed=1, prefix="a"), _vectors(10, seed=2, prefix="b")
    lines = write_ark(tmp_path, "one", first).read_text().splitlines()
    lines += write_ark(tmp_path, "two", second).read_text().splitlines()
    picked = [lines[i] for i in (15, 3, 7, 12, 0)]  # reordered, a subset, spanning both arks
    scp = tmp_path / "picked.scp"
    scp.write_text("\n".join(picked) + "\n")
    emb = read_embeddings(scp, progress=False)
    both = {**first, **second}
    assert emb.keys == [line.split()[0] for line in picked]
    np.testing.assert_array_equal(emb.matrix, np.stack([both[k] for k in emb.keys]))


def test_scp_key_may_differ_from_the_ark_key(tmp_path):
    vectors = _vectors(4)
    lines = write_ark(tmp_path, "emb", vectors).read_text().splitlines()
    scp = tmp_path / "renamed.scp"
    scp.write_text("".join(f"renamed{i} {line.split()[1]}\n" for i, line in enumerate(lines)))
    emb = read_embeddings(scp, progress=False)
    np.testing.assert_array_equal(emb.matrix, np.stack(list(vectors.values())))


def test_bad_scps_name_the_file(tmp_path):
    scp = write_ark(tmp_path, "emb", _vectors(3))
    duplicated = tmp_path / "dup.scp"
    duplicated.write_text(scp.read_text() + scp.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"dup\.scp:4: duplicate key 'u000'"):
        read_embeddings(duplicated, progress=False)
    missing_ark = tmp_path / "missing.scp"
    missing_ark.write_text(f"u000 {tmp_path}/nowhere.ark:8\n")
    with pytest.raises(DataError, match=r"missing\.scp: ark file .*nowhere\.ark"):
        read_embeddings(missing_ark, progress=False)
    mixed = write_ark(tmp_path, "mixed", {"a": np.zeros(4, np.float32), "b": np.zeros(5, np.float32)})
    with pytest.raises(DataError, match=r"mixed\.scp: 'b' has 5 dimensions"):
        read_embeddings(mixed, progress=False)
    matrix = write_ark(tmp_path, "matrix", {"m": np.zeros((2, 3), np.float32)})
    with pytest.raises(DataError, match=r"matrix\.scp: 'm' is not a vector"):
        read_embeddings(matrix, progress=False)


def test_trial_with_a_missing_embedding_names_file_line_and_key(tmp_path):
    scp = write_ark(tmp_path, "emb", _vectors(3))
    emb = read_embeddings(scp, progress=False)
    trials_path = tmp_path / "trials"
    trials_path.write_text("u000 u001 target\n\nu001 ghost nontarget\n")
    trials = [("u000", "u001", 1), ("u001", "ghost", 0)]
    with pytest.raises(DataError, match=r"trials:3: no embedding for 'ghost' in .*emb\.scp"):
        emb.trial_rows(trials, trials_path)
    enroll, test = emb.trial_rows(trials[:1], trials_path)
    assert enroll.tolist() == [0] and test.tolist() == [1]


def test_mean_from_npy_or_scp(tmp_path):
    vectors = _vectors(5)
    scp = write_ark(tmp_path, "emb", vectors)
    expected = np.mean(np.stack(list(vectors.values())), axis=0)
    np.testing.assert_allclose(load_mean(scp), expected, rtol=1e-6)
    np.save(tmp_path / "mean.npy", expected)
    np.testing.assert_array_equal(load_mean(tmp_path / "mean.npy"), expected.astype(np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"bad\.npy: expected a vector"):
        load_mean(tmp_path / "bad.npy")


def test_non_finite_embedding_is_an_error_naming_the_key(tmp_path):
    vectors = _vectors(5)
    vectors["u003"][2] = np.inf
    scp = write_ark(tmp_path, "emb", vectors)
    with pytest.raises(DataError, match=r"emb\.scp: the embedding of 'u003' is not finite \(NaN or Inf; 1 of 5"):
        read_embeddings(scp, progress=False)
    with pytest.raises(DataError, match="'u003' is not finite"):
        load_mean(scp)  # a mean computed from an scp goes through the same check


def test_mean_file_must_be_a_finite_vector(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan], np.float32))
    with pytest.raises(DataError, match=r"nan\.npy: the mean embedding is not finite"):
        load_mean(tmp_path / "nan.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: not a readable \.npy array"):  # never unpickled
        load_mean(tmp_path / "obj.npy")


@pytest.mark.parametrize("spec", ["touch {m} |", "| touch {m}", "touch {m} |:5", "touch {m} |:5[0:1]"])
def test_pipe_entries_are_refused_without_running(tmp_path, spec):
    marker = tmp_path / "ran"
    scp = write_ark(tmp_path, "emb", _vectors(2))
    with open(scp, "a", encoding="utf-8") as f:
        f.write(f"bad {spec.format(m=marker)}\n")
    with pytest.raises(DataError, match=r"emb\.scp: 'bad': .* is a pipe command"):
        read_embeddings(scp, progress=False)
    assert not marker.exists()
