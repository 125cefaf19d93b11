"""The console: progress lines when the output is not a terminal, and the third-party warning filters."""
from __future__ import annotations

import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from wespeaker_lap.utils import console
from wespeaker_lap.utils.console import ProgressLines, progress, quiet_third_party_warnings

REPO = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_a_file_gets_lines(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(total=3, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress(total=3, desc="x"), ProgressLines)


def test_lines_every_interval_with_rate_eta_and_postfix(monkeypatch):
    out = io.StringIO()
    clock = iter([0.0, 1.0, 2.0, 31.0, 40.0, 61.5, 62.0]).__next__
    monkeypatch.setattr(console, "_now", clock)
    bar = ProgressLines(total=10, desc="epoch 1/3", unit="step", interval=30, file=out)  # starts at 0
    for _ in range(5):  # at 1, 2, 31 (a line), 40, 61.5 (a line)
        bar.set_postfix(loss="1.234", refresh=False)
        bar.update()
    bar.close()  # at 62: the final line
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/3: 3/10 step (30%), 0.0968 step/s, 00:31 elapsed, eta 01:12")
    assert lines[0].endswith("| loss=1.234")
    assert lines[1].startswith("epoch 1/3: 5/10 step (50%)")
    assert lines[2].startswith("epoch 1/3: 5/10 step (50%)") and "eta" not in lines[2]
    assert len(lines) == 3


def test_a_short_loop_that_says_nothing_meanwhile_stays_silent(monkeypatch):
    out = io.StringIO()
    quiet = ProgressLines(range(4), desc="reading", leave=False, interval=60, file=out)
    assert list(quiet) == [0, 1, 2, 3] and out.getvalue() == ""
    kept = ProgressLines(range(4), desc="reading", leave=True, interval=60, file=out)
    assert list(kept) == [0, 1, 2, 3] and out.getvalue().startswith("reading: 4/4 it (100%)")
    off = ProgressLines(range(4), disable=True, interval=0, file=out)
    list(off)
    assert out.getvalue().count("\n") == 1
    monkeypatch.setenv(console.PROGRESS_SECONDS_ENV, "soon")
    with pytest.raises(ValueError, match="WESPEAKER_LAP_PROGRESS_SECONDS='soon'"):
        ProgressLines(total=1)


def test_byte_counts_are_scaled():
    out = io.StringIO()
    bar = ProgressLines(total=3_000_000, desc="md5 x.zip", unit="B", unit_scale=True, interval=1e9, file=out)
    bar.update(1_500_000)
    bar.close()
    assert out.getvalue().startswith("md5 x.zip: 1.50M/3.00M B (50%)")


def test_only_the_known_third_party_warnings_are_filtered(caplog, monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monkeypatch.setattr(console, "_installed", False)
        quiet_third_party_warnings()  # its filters go in front of "always"
        warnings.warn("`torch.nn.utils.weight_norm` is deprecated in favor of ...", FutureWarning)
        warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated. Use same type", UserWarning)
        warnings.warn("`torch.nn.utils.weight_norm` is deprecated in favor of ...", UserWarning)  # other category
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message)[:30] for w in caught] == ["`torch.nn.utils.weight_norm` i", "something else is deprecated"]
    espnet = logging.getLogger("s3prl.upstream.espnet_hubert.expert")
    with caplog.at_level(logging.WARNING):
        espnet.warning("ESPnet is not installed, cannot use espnet_hubert upstream")
        espnet.warning("another message of that module")
    assert [r.getMessage() for r in caplog.records] == ["another message of that module"]


BUILD_AND_RUN = """
import sys, warnings
warnings.simplefilter("default")
import torch
if sys.argv[2] == "ours":
    from wespeaker_lap.upstream import Upstream
    model = Upstream("wavlm_local", path=sys.argv[1])
    model(torch.randn(2, 8000), torch.tensor([8000, 6000]))
else:  # s3prl directly, without our filters: the warnings must show (the test can fail)
    import logging
    logging.basicConfig()
    from s3prl.nn import S3PRLUpstream
    model = S3PRLUpstream("wavlm_local", path_or_url=sys.argv[1]).eval()
    model(torch.randn(2, 8000), torch.tensor([8000, 6000]))
"""


@pytest.mark.slow
def test_building_and_running_an_upstream_prints_no_third_party_warning(tiny_upstreams):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    outputs = {}
    for mode in ("ours", "bare"):
        result = subprocess.run([sys.executable, "-c", BUILD_AND_RUN, str(tiny_upstreams["wavlm"]), mode],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[mode] = result.stderr
    for needle in ("weight_norm", "key_padding_mask", "ESPnet is not installed"):
        assert needle in outputs["bare"], needle
        assert needle not in outputs["ours"], needle
    assert "warning" not in outputs["ours"].lower()
