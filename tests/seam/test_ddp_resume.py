"""A checkpoint of a single-process run resumes into the multi-process run's DDP wrapper, as
``open_clip_train.main`` loads it (``model.load_state_dict(checkpoint["state_dict"])`` on the
wrapped model): the plugin's DDP (``seam/patches.py``) in a one-rank gloo group, in this process."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.parallel as parallel

from openclip_unimlip.seam import patches


@pytest.fixture
def ddp(monkeypatch):
    """The plugin's DistributedDataParallel (the stock one restored afterwards) in a one-rank group."""
    monkeypatch.setattr(parallel, "DistributedDataParallel", parallel.DistributedDataParallel)
    patches._patch_ddp()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield parallel.DistributedDataParallel
    dist.destroy_process_group()


@pytest.fixture
def stock_ddp(monkeypatch):
    """torch's own DistributedDataParallel in its place (restored afterwards), for ``_patch_ddp`` to replace."""
    stock = parallel.distributed.DistributedDataParallel
    monkeypatch.setattr(parallel, "DistributedDataParallel", stock)
    return stock


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_a_single_process_checkpoint_resumes_into_several_processes(ddp):
    single = _model(0)  # a one-process run saves its bare model: no "module." prefix
    single(torch.randn(8, 3))  # running statistics that must come back too
    checkpoint = {key: value.clone() for key, value in single.state_dict().items()}
    wrapped = ddp(_model(1), device_ids=["cpu"])
    wrapped.load_state_dict(checkpoint)
    assert all(torch.equal(wrapped.module.state_dict()[key], value) for key, value in checkpoint.items())
    # a several-process run's checkpoint ("module." keys) loads as before, strictly
    saved = {key: value + 1 for key, value in wrapped.state_dict().items()}
    wrapped.load_state_dict(saved)
    assert all(torch.equal(wrapped.state_dict()[key], value) for key, value in saved.items())
    with pytest.raises(RuntimeError, match="Missing key"):
        wrapped.load_state_dict({key: value for key, value in checkpoint.items() if key != "0.weight"})


def test_the_replacement_is_installed_once(stock_ddp):
    """Every training run's parse installs it; a second run in the same process keeps the one
    installed, whose only base is torch's own class."""
    patches._patch_ddp()
    installed = parallel.DistributedDataParallel
    patches._patch_ddp()
    assert parallel.DistributedDataParallel is installed and installed.__bases__ == (stock_ddp,)


def test_only_cpu_device_ids_are_dropped(stock_ddp, monkeypatch):
    """open_clip_train passes ``device_ids=[device]``: dropped for a CPU device (torch rejects them for
    CPU modules), kept for a GPU, and no ids stay no ids (torch's constructor, recorded)."""
    received = []
    monkeypatch.setattr(stock_ddp, "__init__", lambda self, module, device_ids=None, *args, **kwargs:
                        received.append(device_ids))
    patches._patch_ddp()
    for device_ids in (["cpu"], [torch.device("cpu")], ["cuda:0"], [0], None):
        parallel.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids)
    assert received == [None, None, ["cuda:0"], [0], None]
