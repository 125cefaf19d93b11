"""Speed settings that must not change results: AMP-mode resume, micro-batches, bf16 frozen upstream, compile."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from wespeaker_lap.config import BackendConfig, DataConfig, ModelConfig, UpstreamConfig, from_dict
from wespeaker_lap.data.pipeline import TrainDataset
from wespeaker_lap.models import build_speaker_model
from wespeaker_lap.training.performance import accumulation_steps, cast_frozen_upstream, compile_model
from wespeaker_lap.training.step import restore_scaler

from .training_helpers import run_in_process, tiny_config


def test_a_bf16_checkpoint_resumes_under_fp16(caplog):
    """bf16 (and CPU) runs save the disabled scaler's empty state; an fp16 run used to refuse to load it."""
    bf16_state = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert bf16_state == {}
    with pytest.raises(RuntimeError, match="empty"):  # the crash, as GradScaler itself raises it
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict(bf16_state)
    fp16 = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    with caplog.at_level(logging.INFO):
        restore_scaler(fp16, bf16_state)
    assert fp16.get_scale() == 1024.0 and "fresh scale" in caplog.text


def test_an_fp16_checkpoint_resumes_under_bf16_and_fp16():
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=256.0)
    saved.scale(torch.ones(()))  # initialises the scale, as a first step does
    saved.update(new_scale=64.0)
    state = saved.state_dict()
    bf16 = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(bf16, state)
    assert not bf16.is_enabled() and bf16.state_dict() == {}
    fp16 = torch.amp.GradScaler("cpu", enabled=True)
    restore_scaler(fp16, state)
    assert fp16.get_scale() == 64.0  # the learned scale carries over


def test_micro_batch_size_sets_the_accumulation():
    assert accumulation_steps(512, 4, None, 4) == 4
    assert accumulation_steps(512, 4, 32, 2) == 8  # phase 3 on 2 GPUs with 32 crops each
    assert accumulation_steps(512, 1, 128, 4) == 1
    with pytest.raises(ValueError, match=r"train.micro_batch_size \(48\)"):
        accumulation_steps(512, 1, 48, 2)
    with pytest.raises(ValueError, match="optim.accum_steps"):
        accumulation_steps(512, 3, None, 1)


@pytest.mark.parametrize("world_size, micro_batch", [(1, 4), (2, 2), (4, 1), (2, 4)])
def test_each_step_sees_the_same_utterances_on_any_gpu_count(tiny_train_dir, world_size, micro_batch):
    """Step k uses global batch k of the epoch order, however it is cut into processes and micro-batches."""
    data, batch_size = from_dict(DataConfig, tiny_config(tiny_train_dir, "unused.pt")["data"]), 8
    accum = accumulation_steps(batch_size, 1, micro_batch, world_size)
    ranks = [TrainDataset(data, batch_size // accum, rank, world_size, seed=3, epoch=1) for rank in range(world_size)]
    reference = TrainDataset(data, batch_size, 0, 1, seed=3, epoch=1)
    for step in range(reference.batches_per_epoch):
        seen = sorted(key for rank in ranks for micro in range(step * accum, (step + 1) * accum)
                      for key in _keys(rank, micro))
        assert seen == sorted(_keys(reference, step))


def _keys(dataset: TrainDataset, batch: int):
    return [dataset.corpus.utterances[dataset.order[p]][0] for p in dataset.positions(batch)]


def test_micro_batch_size_trains_as_the_same_accumulation(tmp_path, tiny_train_dir, tiny_upstreams,
                                                          in_process_torch):
    """``train.micro_batch_size=4`` of a batch of 8 is ``optim.accum_steps=2``: the same losses, step by step."""
    losses = {}
    for name, optim, train in (("accum", {"accum_steps": 2}, {}), ("micro", {}, {"micro_batch_size": 4})):
        cfg = tiny_config(tiny_train_dir, tiny_upstreams["wavlm"], optim=optim, train={"epochs": 1, **train})
        run_in_process(cfg, tmp_path / name)
        records = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["loss"] for line in records]
    assert len(losses["micro"]) == 4 and losses["micro"] == losses["accum"]


def _tiny_model(upstream: UpstreamConfig):
    torch.manual_seed(0)
    return build_speaker_model(ModelConfig(upstream=upstream, backend=BackendConfig(
        "lap_astp", {"hidden_dim": 32, "n_heads": 4, "embed_dim": 16}))).eval()


def _upstream_configs(tiny_upstreams, tiny_hf_dir, frozen=True):
    configs = [UpstreamConfig(f"{f}_local", path=str(tiny_upstreams[f]), frozen=frozen) for f in sorted(tiny_upstreams)]
    return configs + [UpstreamConfig(f"hf:{tiny_hf_dir}", frozen=frozen)]


def test_bf16_frozen_upstream_gives_the_autocast_result(tiny_upstreams, tiny_hf_dir):
    """Under (CPU) bf16 autocast, bf16-stored linear/conv weights give what autocast computes from fp32 ones."""
    wavs, lens = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0)), torch.tensor([8000, 8000])
    for upstream in _upstream_configs(tiny_upstreams, tiny_hf_dir):
        reference, cast = _tiny_model(upstream), _tiny_model(upstream)
        assert cast_frozen_upstream(cast, torch.bfloat16)
        weights = {p.dtype for m in cast.upstream.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
        assert weights == {torch.bfloat16}
        assert all(p.dtype == torch.float32 for p in cast.backend.parameters())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            expected, got = reference(wavs, lens), cast(wavs, lens)
        torch.testing.assert_close(got.float(), expected.float(), rtol=0.05, atol=0.05, msg=upstream.name)


def test_bf16_cast_only_for_a_frozen_upstream_under_bf16(tiny_upstreams):
    upstream = UpstreamConfig("wavlm_local", path=str(tiny_upstreams["wavlm"]), frozen=True)
    assert not cast_frozen_upstream(_tiny_model(upstream), torch.float16)
    assert not cast_frozen_upstream(_tiny_model(upstream), None)
    trained = UpstreamConfig("wavlm_local", path=str(tiny_upstreams["wavlm"]), frozen=False)
    assert not cast_frozen_upstream(_tiny_model(trained), torch.bfloat16)


def test_compile_keeps_the_state_dict_and_the_result(tiny_upstreams):
    """``train.compile`` compiles in place (checkpoint keys unchanged) and computes the same embeddings and
    gradients; ``aot_eager`` traces like inductor, without its minutes of C++ compilation on a CPU."""
    upstream = UpstreamConfig("wavlm_local", path=str(tiny_upstreams["wavlm"]), frozen=False)
    eager, compiled = _tiny_model(upstream).train(), _tiny_model(upstream).train()
    keys = list(compiled.state_dict())
    torch._dynamo.reset()
    compile_model(compiled, "all", backend="aot_eager")
    assert list(compiled.state_dict()) == keys
    for model in (eager, compiled):
        model.backend.astp.dropout = 0.0  # the only random step left once the upstream is in eval mode
        model.backend.lap.gate_dropout.p = 0.0
        model.upstream.eval()
    wavs, lens = torch.randn(3, 8000, generator=torch.Generator().manual_seed(1)), torch.full((3,), 8000)
    results = []
    for model in (eager, compiled):
        emb = model(wavs, lens)
        emb.square().sum().backward()
        results.append((emb.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    assert results[1][1].keys() == results[0][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # something was really compiled
    with pytest.raises(ValueError, match="train.compile"):
        compile_model(compiled, "everything")
