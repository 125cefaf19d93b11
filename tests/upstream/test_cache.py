"""Pre-staged s3prl caches: registered names load offline; missing weights give a helpful error.

The network is blocked by pointing every proxy variable at a closed local port, which both of
s3prl's downloaders (urllib, then requests) honour, so no test can reach the internet.
"""
import hashlib
import importlib.util
import socket
from pathlib import Path

import pytest

from wespeaker_lap.upstream import (
    Upstream,
    UpstreamError,
    WeightsNotFoundError,
    cache_file,
    registered_url,
    stage_weights,
)

REPO = Path(__file__).resolve().parents[2]
WAVLM_BASE_PLUS_URL = "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wavlm_base_plus.pt"


@pytest.fixture
def no_network(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed_port}")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)


def _download_tool():
    spec = importlib.util.spec_from_file_location("download_upstream", REPO / "tools" / "download_upstream.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_cache_file_is_named_like_s3prl_names_it(tmp_path):
    assert registered_url("wavlm_base_plus") == WAVLM_BASE_PLUS_URL
    assert registered_url("wavlm") == WAVLM_BASE_PLUS_URL  # an alias follows its target
    expected = hashlib.sha256(WAVLM_BASE_PLUS_URL.encode()).hexdigest() + ".wavlm_base_plus.pt"
    assert cache_file("wavlm_base_plus", tmp_path) == tmp_path.resolve() / expected


def test_staged_registered_name_loads_offline(tmp_path, tiny_upstreams, no_network):
    import s3prl.util.download

    default_dir = s3prl.util.download._download_dir
    staged = stage_weights("wavlm_base_plus", tiny_upstreams["wavlm"], tmp_path)
    assert staged.read_bytes() == tiny_upstreams["wavlm"].read_bytes()
    up = Upstream("wavlm_base_plus", cache_dir=str(tmp_path))
    assert (up.n_layers, up.hidden_dim) == (4, 32)  # the tiny file, not WavLM Base+ (13 x 768)
    assert s3prl.util.download._download_dir == default_dir  # the cache dir does not leak


def test_missing_weights_say_which_file_goes_where(tmp_path, no_network):
    with pytest.raises(WeightsNotFoundError) as info:
        Upstream("hubert_base", cache_dir=str(tmp_path))
    message = str(info.value)
    assert str(cache_file("hubert_base", tmp_path)) in message
    assert registered_url("hubert_base") in message
    assert "--from_file" in message
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]  # nothing half-written


def test_download_tool_stages_a_file_and_prints_its_path(tmp_path, tiny_upstreams, capsys, no_network):
    tool = _download_tool()
    tool.main(["wavlm_base_plus", "--cache_dir", str(tmp_path), "--print_path"])
    expected = capsys.readouterr().out.strip()
    assert not Path(expected).exists()
    tool.main(["wavlm_base_plus", "--cache_dir", str(tmp_path), "--from_file", str(tiny_upstreams["wavlm"])])
    assert capsys.readouterr().out.strip() == expected
    assert Path(expected).read_bytes() == tiny_upstreams["wavlm"].read_bytes()


def test_download_tool_rejects_what_cannot_be_staged(tmp_path, tiny_upstreams, no_network):
    tool = _download_tool()
    with pytest.raises(UpstreamError, match=r"wavlm_base_plus.pt: could not load as wavlm_base_plus"):
        tool.main(["wavlm_base_plus", "--cache_dir", str(tmp_path), "--from_file", str(tiny_upstreams["hubert"])])
    assert not cache_file("wavlm_base_plus", tmp_path).exists()  # the bad file is not left behind
    with pytest.raises(UpstreamError, match="takes a local checkpoint"):
        tool.main(["wavlm_local", "--cache_dir", str(tmp_path), "--from_file", str(tiny_upstreams["wavlm"])])
    with pytest.raises(UpstreamError, match="hf:/path/to/dir"):
        tool.main(["hf:some/model", "--cache_dir", str(tmp_path), "--from_file", str(tiny_upstreams["wavlm"])])
