"""A train step reads tensor values to the host a few times, whatever the batch size (each read is a GPU sync)."""
import torch

from wespeaker_lap.config import BackendConfig, ModelConfig, UpstreamConfig
from wespeaker_lap.losses import AAMSoftmax
from wespeaker_lap.models import build_speaker_model
from wespeaker_lap.training.step import train_step
from wespeaker_lap.training.trainer import SpeakerClassifier
from wespeaker_lap.upstream.tiny import TINY_FAMILIES
from wespeaker_lap.utils.host_syncs import HostSyncCounter

MAX_HOST_READS = 8
N_CLASSES = 6


def _classifier(upstream: UpstreamConfig) -> SpeakerClassifier:
    torch.manual_seed(0)
    backend = BackendConfig("lap_astp", {"hidden_dim": 32, "n_heads": 4, "embed_dim": 16})
    model = build_speaker_model(ModelConfig(upstream=upstream, backend=backend))
    return SpeakerClassifier(model, AAMSoftmax(16, N_CLASSES, 30.0, 0.2, 2, 2, 0.05)).train()


def _host_reads_of_one_step(classifier: SpeakerClassifier, batch_size: int) -> HostSyncCounter:
    """Host reads of a whole ``train_step`` (forward, backward, gradient norm, update) on equal-length crops."""
    generator = torch.Generator().manual_seed(batch_size)
    wavs = torch.randn(batch_size, 8000, generator=generator)
    micro_batch = (wavs, torch.full((batch_size,), 8000), torch.arange(batch_size) % N_CLASSES)
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01)  # keeps no step counters of its own to read
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(classifier, iter([micro_batch]), 1, optimizer, scaler, None, None)  # warm-up (lazy inits)
    with HostSyncCounter() as counter:
        result = train_step(classifier, iter([micro_batch]), 1, optimizer, scaler, None, 1.0)
    assert result.applied
    return counter


def _upstreams(tiny_upstreams, tiny_hf_dir):
    for family in sorted(TINY_FAMILIES):
        for frozen in (True, False):
            yield f"{family}-{'frozen' if frozen else 'trained'}", UpstreamConfig(
                f"{family}_local", path=str(tiny_upstreams[family]), frozen=frozen)
    for frozen in (True, False):
        yield f"hf-{'frozen' if frozen else 'trained'}", UpstreamConfig(f"hf:{tiny_hf_dir}", frozen=frozen)


def test_a_train_step_reads_the_host_a_constant_few_times(tiny_upstreams, tiny_hf_dir):
    counts = {}
    for name, upstream in _upstreams(tiny_upstreams, tiny_hf_dir):
        classifier = _classifier(upstream)
        counts[name] = [_host_reads_of_one_step(classifier, batch) for batch in (4, 16)]
    report = {name: [dict(c.by_op) for c in pair] for name, pair in counts.items()}
    for name, (small, large) in counts.items():
        assert small.total <= MAX_HOST_READS and small.by_op == large.by_op, report


def test_the_counter_sees_per_utterance_reads():
    """The counter catches what the old s3prl path did: a Python loop over a length tensor."""
    lens = torch.arange(1, 17)
    with HostSyncCounter() as counter:
        longest = max(lens)  # 15 comparisons -> 15 bool() reads
        torch.arange(16)[lens > 8]  # boolean indexing: the output shape depends on the values
    assert int(longest) == 16
    assert counter.by_op["_local_scalar_dense"] == 15 and counter.by_op["index"] == 1


def test_to_device_copies_host_lengths_and_keeps_a_tensor_already_there():
    from wespeaker_lap.utils.host_syncs import to_device

    lengths = torch.tensor([5, 3])
    assert to_device(lengths, "cpu") is lengths
    moved = to_device(lengths, "meta")  # stands in for a GPU: another device, no values to read back
    assert moved.device.type == "meta" and moved.shape == (2,) and moved.dtype == torch.long
    with HostSyncCounter() as syncs:
        to_device(lengths, "meta")
    assert syncs.total == 0
