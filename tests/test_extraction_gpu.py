"""Fast vs exact extraction on a real GPU (marked ``gpu``, skipped without CUDA; ``benchmarks/gpu/check.sh`` runs it).

Stage 4 in this process (``extraction.extract_data_dir``: world size 1, loader workers, pinned memory,
the one-batch pipeline) on a tiny random-init WavLM + LAP+ASTP model file:

* exact mode twice: bit-identical, and equal to the Python API's embedder on the same device;
* ``mode: auto`` resolves to fast bf16 + TF32 on CUDA, and stays within ``WORST_COSINE_BF16`` of
  exact (cosine, every utterance); fast fp32 within ``WORST_COSINE_FP32``, and the batches' longest
  utterances (not padded) within ``UNPADDED_COSINE_FP32`` (TF32 alone);
* the upstream's and the backend's matrix products run in bf16 in fast mode and in fp32 in exact mode,
  and the TF32 switches are restored afterwards.

The measured cosines are printed as one ``extraction_gpu_result`` JSON line (``pytest -rA`` shows it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from wespeaker_lap.config import EvalConfig, ExtractionConfig, from_dict
from wespeaker_lap.data.kaldi import load_data_dir

from tests.extraction_helpers import write_model, write_tone_dir

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

WORST_COSINE_BF16 = 0.98  # fast mode as configured by default on a GPU (bf16, batched) vs exact
WORST_COSINE_FP32 = 0.99  # fast fp32 (batched, TF32) vs exact
UNPADDED_COSINE_FP32 = 0.999  # a batch's longest utterance in fast fp32: only TF32 differs from exact


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """30 utterances in groups of 3-4 whose lengths differ by under 2 % (so fast mode batches them), plus loners."""
    seconds = [base * (1 - 0.004 * k) for base in (0.6, 1.3, 2.2, 3.1, 4.4, 5.5, 7.0) for k in range(4)] + [0.25, 9.0]
    return write_tone_dir(tmp_path_factory.mktemp("gpu_data"), seconds, 3, np.random.default_rng(0))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, tiny_upstreams) -> Path:
    return write_model(tmp_path_factory.mktemp("gpu_model") / "final_model.pt", tiny_upstreams["wavlm"], seed=0)


@pytest.fixture
def restored_switches():
    """``extract_data_dir`` sets stage 4's global switches (deterministic kernels); put them back afterwards."""
    state = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = state[2:]


def stage4(model_file: Path, data_dir: Path, out_dir: Path, **extraction):
    """``extract_data_dir`` with these extraction settings (2 loader workers); the root logger's handlers kept."""
    from wespeaker_lap.extraction import extract_data_dir
    from wespeaker_lap.scoring.embeddings import read_embeddings

    cfg = from_dict(EvalConfig, {"extraction": {"num_workers": 2, **extraction}})
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        scp = extract_data_dir(model_file, data_dir, out_dir, cfg)  # its setup_logging replaces the handlers
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
    assert scp is not None
    return read_embeddings(scp, progress=False)


def cosines(reference, other) -> np.ndarray:
    a, b = reference.matrix, other.matrix[other.rows(reference.keys)]
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fast_extraction_is_close_to_exact_and_exact_is_deterministic(model_file, data_dir, tmp_path,
                                                                        restored_switches):
    from wespeaker_lap.data.audio import read_audio
    from wespeaker_lap.extraction import shard_batches
    from wespeaker_lap.inference import Embedder
    from wespeaker_lap.models.model_file import load_speaker_model

    exact = stage4(model_file, data_dir, tmp_path / "exact", mode="exact")
    again = stage4(model_file, data_dir, tmp_path / "again", mode="exact")
    np.testing.assert_array_equal(again.matrix[again.rows(exact.keys)], exact.matrix)

    data = load_data_dir(data_dir)
    model, _ = load_speaker_model(model_file, device="cuda")
    api = Embedder(model, "cuda")  # what load_model(...).embed uses
    wavs = [read_audio(key, data.wav_scp[key], 16000) for key in exact.keys]
    np.testing.assert_array_equal(api.embed_many(wavs), exact.matrix)

    fast = stage4(model_file, data_dir, tmp_path / "fast")  # the defaults: mode auto
    signature = json.loads((tmp_path / "fast" / "xvector.0.signature.json").read_text())["extraction"]
    assert (signature["mode"], signature["device"], signature["precision"], signature["tf32"]) == \
        ("fast", "cuda", "bf16", True)
    fast32 = stage4(model_file, data_dir, tmp_path / "fast32", mode="fast", precision="fp32")
    assert np.isfinite(fast.matrix).all() and np.isfinite(fast32.matrix).all()

    batches = shard_batches(Embedder.from_config(model, "cuda", ExtractionConfig()), data)
    assert max(map(len, batches)) >= 3, "the data should give fast mode batches of several utterances"
    cos_bf16, cos_fp32 = cosines(exact, fast), cosines(exact, fast32)
    unpadded = [exact.index[batch[0]] for batch in batches]  # the longest of each batch: no padding
    result = {"gpu": torch.cuda.get_device_name(0), "utterances": len(exact.keys), "batches": len(batches),
              "fast_bf16": {"worst_cosine": float(cos_bf16.min()), "mean_cosine": float(cos_bf16.mean())},
              "fast_fp32_tf32": {"worst_cosine": float(cos_fp32.min()), "mean_cosine": float(cos_fp32.mean()),
                                 "worst_unpadded_cosine": float(cos_fp32[unpadded].min())},
              "tolerances": {"bf16": WORST_COSINE_BF16, "fp32": WORST_COSINE_FP32, "unpadded": UNPADDED_COSINE_FP32}}
    print("extraction_gpu_result", json.dumps(result))
    assert cos_bf16.min() >= WORST_COSINE_BF16, result
    assert cos_fp32.min() >= WORST_COSINE_FP32, result
    assert cos_fp32[unpadded].min() >= UNPADDED_COSINE_FP32, result
    assert not np.array_equal(fast.matrix[fast.rows(exact.keys)], exact.matrix)  # fast mode is not exact mode


def module_output_dtypes(model: torch.nn.Module, run) -> dict:
    """``{"upstream"|"backend": set of output dtypes}`` of the Linear and Conv layers while ``run()`` runs."""
    seen: dict = {"upstream": set(), "backend": set()}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            part = name.split(".")[0]

            def record(mod, inputs, output, part=part):
                if torch.is_tensor(output) and part in seen:
                    seen[part].add(output.dtype)

            hooks.append(module.register_forward_hook(record))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_fast_mode_runs_in_bf16_and_exact_mode_in_fp32(model_file, data_dir):
    from wespeaker_lap.data.audio import read_audio
    from wespeaker_lap.inference import Embedder
    from wespeaker_lap.models.model_file import load_speaker_model

    data = load_data_dir(data_dir)
    wavs = [read_audio(key, path, 16000) for key, path in sorted(data.wav_scp.items())[:6]]
    model, _ = load_speaker_model(model_file, device="cuda")
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    fast = Embedder.from_config(model, "cuda", ExtractionConfig())  # the defaults: auto -> fast bf16 on CUDA
    exact = Embedder.from_config(model, "cuda", ExtractionConfig(mode="exact"))
    out = {}
    fast_dtypes = module_output_dtypes(model, lambda: out.setdefault("fast", fast.embed_many(wavs)))
    exact_dtypes = module_output_dtypes(model, lambda: out.setdefault("exact", exact.embed_many(wavs)))
    print("extraction_gpu_dtypes", {k: sorted(map(str, v)) for k, v in fast_dtypes.items()},
          {k: sorted(map(str, v)) for k, v in exact_dtypes.items()})
    assert torch.bfloat16 in fast_dtypes["upstream"]
    assert not fast_dtypes["backend"] or torch.bfloat16 in fast_dtypes["backend"]
    assert exact_dtypes["upstream"] == {torch.float32} and exact_dtypes["backend"] <= {torch.float32}
    assert out["fast"].dtype == np.float32 and out["fast"].shape == out["exact"].shape
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32
