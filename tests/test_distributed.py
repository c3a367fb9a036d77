"""DDP on CPU with gloo: two processes must equal one process on the concatenated batch."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import free_port, tiny_config, tiny_overrides, write_photos
from selfsup.engine import checkpoint
from selfsup.errors import SelfsupError

pytestmark = pytest.mark.slow
GLOBAL_BATCH = 16



def _fixed_views(rank: int, world: int) -> list[torch.Tensor]:
    """The same global two-view batch in every setup; each rank takes its rows."""
    g = torch.Generator().manual_seed(123)
    views = [torch.randn(GLOBAL_BATCH, 1, 16, 16, generator=g) for _ in range(2)]
    rows = GLOBAL_BATCH // world
    return [v[rank * rows:(rank + 1) * rows] for v in views]


def _steps(run, rank: int, world: int, steps: int = 3) -> list[float]:
    """Run real train_steps on fixed views with frozen BatchNorm statistics.

    Per-process BN statistics differ from one process's statistics by design (SyncBN is
    GPU-only); freezing them isolates what must match exactly: the gathered negatives,
    the gradient through the gather, DDP's averaging, and the optimiser step. The frozen
    statistics are those of the whole global batch, the same in every setup.
    """
    norms = [m for m in run.method.modules() if isinstance(m, _BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a plain average over the calibration pass
    with torch.no_grad():
        run.method.backbone(torch.cat(_fixed_views(0, 1)))
        run.method.projector(run.method.backbone(torch.cat(_fixed_views(0, 1))))
    for module in norms:
        module.eval()
    fixed = _fixed_views(rank, world)
    run.method.views.forward = lambda images: fixed  # every step trains on these views, whatever the images
    index = torch.arange(GLOBAL_BATCH // world)
    targets = torch.full_like(index, -1)
    return [run.engine.train_step(torch.zeros(1, dtype=torch.uint8), targets, index)["loss"] for _ in range(steps)]


def _exact_config(root):
    # fp32: bf16 rounds an 8-row and a 16-row matmul differently; the check is about the algorithm.
    return tiny_config(Path(root), train__batch_size=GLOBAL_BATCH, train__precision="fp32")


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.engine import dist
    from selfsup.recipes.pretrain import Pretraining

    results = {}
    for name, extra in (("odd_batch", {"train__batch_size": 15}), ("sync_bn", {"train__sync_bn": True})):
        try:
            Pretraining(tiny_config(Path(root), **extra), Path(out) / name, quiet=True)
        except SelfsupError as err:
            results[name] = str(err)
    run = Pretraining(_exact_config(root), Path(out) / "ddp", quiet=True)
    same_images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    my_views = run.method.views(same_images)[0]
    other_views = dist.gather(my_views.unsqueeze(0))
    results["augmentations_differ_across_ranks"] = not torch.allclose(other_views[0], other_views[1])
    results["losses"] = _steps(run, rank, world)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in run.method.state_dict().items()}, Path(out) / "ddp.pt")
        (Path(out) / "results.json").write_text(json.dumps(results))
    dist.destroy()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each gloo worker: the same reduction order
    yield
    torch.set_num_threads(threads)


def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch(mnist_root, tmp_path, one_thread):
    from selfsup.recipes.pretrain import Pretraining

    mp.spawn(_worker, args=(2, free_port(), str(mnist_root), str(tmp_path)), nprocs=2, join=True)
    results = json.loads((tmp_path / "results.json").read_text())
    assert "cannot be split evenly over 2 processes" in results["odd_batch"]
    assert "sync_bn needs GPUs" in results["sync_bn"]
    assert results["augmentations_differ_across_ranks"]

    single = Pretraining(_exact_config(mnist_root), tmp_path / "single", quiet=True)
    single_losses = _steps(single, 0, 1)
    assert results["losses"] == pytest.approx(single_losses, rel=1e-5)
    assert results["losses"][-1] < results["losses"][0]  # and it learns
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for key, value in single.method.state_dict().items():
        assert torch.allclose(ddp[key].float(), value.float(), rtol=1e-4, atol=1e-6), key


def test_torchrun_two_processes_end_to_end(mnist_root, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "selfsup", "pretrain", "--run-dir", str(run), "--quiet"]
    for item in tiny_overrides(mnist_root, train__epochs=2):
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    state = checkpoint.load(run)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 8  # 64 images / 16 a step, 2 epochs
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["stream"] == "step"]
    assert steps == list(range(1, 9))  # one writer: no duplicated rows
    assert json.loads((run / "meta.json").read_text())["world_size"] == 2
    # Resuming under torchrun with the same world size continues the run.
    more = command + ["--resume", "--set", "train.epochs=3", "--allow-change", "train.epochs"]
    done = subprocess.run(more, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert checkpoint.load(run)["step"] == 12


METHOD_SETTINGS = {
    "rotation": {}, "decoupled_rotnet": {"method__num_negatives": 16}, "jigsaw": {"data__image_size": 30},
    "context_prediction": {"data__image_size": 30}, "exemplar": {}, "counting": {},
    "multitask": {"data__image_size": 30}, "npid": {"method__num_negatives": 16},
    "pirl": {"method__num_negatives": 16, "data__image_size": 30}, "simclr": {},
    "moco": {"method__queue_size": 64}, "byol": {"method__proj_hidden_dim": 64, "method__pred_hidden_dim": 64},
    "simsiam": {"method__proj_dim": 64}, "barlow_twins": {"method__proj_dim": 64},
    "dino": {"method__out_dim": 64, "method__hidden_dim": 64, "views__num_local": 2},
    "maskfeat": {"backbone__name": "vit_tiny", "backbone__width": 64}, "composite": {"method__proj_hidden_dim": 64},
    "selfie": {}, "cpc": {"backbone__norm": "layer"},
}


def _every_method_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.engine import dist
    from selfsup.recipes.pretrain import Pretraining

    results = {}
    for name, extra in METHOD_SETTINGS.items():
        config = tiny_config(Path(root), method__name=name, train__batch_size=8, train__knn_every=0, **extra)
        run = Pretraining(config, Path(out) / name, quiet=True)
        images, targets, index = next(run.loader.iterate())
        losses = [run.engine.train_step(images, targets, index)["loss"] for _ in range(2)]
        # Replicated state (weights, banks, samplers) must stay identical on every rank through their
        # own updates; BN running statistics are per rank until the engine averages them.
        state = torch.cat([v.float().flatten() for k, v in run.method.state_dict().items()
                           if "running_" not in k and "num_batches" not in k])
        checksums = dist.gather(state.sum().view(1))
        results[name] = {"losses": losses, "same_state": bool(torch.allclose(checksums[0], checksums[1]))}
    if rank == 0:
        (Path(out) / "every_method.json").write_text(json.dumps(results))
    dist.destroy()


def test_every_method_takes_ddp_steps_with_identical_replicas(mnist_root, tmp_path, one_thread):
    from selfsup.methods import METHODS

    assert set(METHOD_SETTINGS) == set(METHODS), "a new method needs its DDP smoke settings here"
    mp.spawn(_every_method_worker, args=(2, free_port(), str(mnist_root), str(tmp_path)), nprocs=2, join=True)
    results = json.loads((tmp_path / "every_method.json").read_text())
    for name, result in results.items():
        assert all(math.isfinite(loss) for loss in result["losses"]), name
        assert result["same_state"], f"{name}: the replicas diverged"


def _buffers_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.engine import dist
    from selfsup.recipes.pretrain import Pretraining

    config = tiny_config(Path(root), method__name="npid", method__num_negatives=16, train__batch_size=8,
                         train__epochs=1, train__knn_every=0)
    run = Pretraining(config, Path(out) / "npid", quiet=True)
    results = {"broadcast_buffers": run.engine.model.broadcast_buffers}
    images, targets, index = next(run.loader.iterate())
    untouched = int(torch.isin(torch.arange(len(run.splits.train)), dist.gather(index), invert=True).nonzero()[0])
    if rank == 1:  # a replica that drifted: broadcasting buffers would silently overwrite it from rank 0
        run.method.memory.bank[untouched] = -run.method.memory.bank[untouched]
    run.engine.train_step(images, targets, index)
    entries = dist.gather(run.method.memory.bank[untouched].unsqueeze(0))
    results["bank_entry_kept_per_rank"] = not torch.allclose(entries[0], entries[1])
    # BatchNorm statistics are per rank during the epoch and averaged at its end.
    norms = [m for m in run.method.modules() if isinstance(m, _BatchNorm)]
    before = dist.gather(norms[0].running_mean.unsqueeze(0))
    results["norm_stats_differ_during_epoch"] = not torch.allclose(before[0], before[1])
    run.fit()  # the rest of the epoch; the engine averages the statistics at its end
    after = dist.gather(norms[0].running_mean.unsqueeze(0))
    results["norm_stats_equal_after_epoch"] = bool(torch.allclose(after[0], after[1]))
    if rank == 0:
        (Path(out) / "buffers.json").write_text(json.dumps(results))
    dist.destroy()


def test_ddp_broadcasts_no_buffers_and_averages_batchnorm_statistics(mnist_root, tmp_path, one_thread):
    mp.spawn(_buffers_worker, args=(2, free_port(), str(mnist_root), str(tmp_path)), nprocs=2, join=True)
    results = json.loads((tmp_path / "buffers.json").read_text())
    assert results == {"broadcast_buffers": False, "bank_entry_kept_per_rank": True,
                       "norm_stats_differ_during_epoch": True, "norm_stats_equal_after_epoch": True}


def _probe_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.data import ImageDataset
    from selfsup.engine import dist
    from selfsup.eval.probe import OnlineProbe
    from selfsup.views import EvalView

    dist.init_from_env("cpu")
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    network.num_features = 8
    images = torch.randint(0, 255, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(rank))
    labelled = torch.arange(8) % 3
    queries = ImageDataset(images, labelled, ["a", "b", "c"])
    probe = OnlineProbe(network, 8, 3, EvalView(8, (0.5,), (0.25,)), queries, fraction=1.0, device=torch.device("cpu"))
    # Rank 1's batches have no labels (mostly unlabelled data): it must still take part, adding nothing.
    targets = labelled if rank == 0 else torch.full((8,), -1)
    logged = [probe.step(images, targets) for _ in range(3)]
    none = probe.step(images, torch.full((8,), -1))  # no rank has labels: nobody steps, nobody hangs
    torch.save({"head": {k: v.clone() for k, v in probe.head.state_dict().items()}, "logged": logged, "none": none},
               Path(out) / f"probe-{rank}.pt")
    dist.destroy()


def test_the_online_probe_steps_together_when_one_rank_has_no_labels(tmp_path, one_thread):
    mp.spawn(_probe_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"probe-{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert ranks[0]["logged"][0] and not ranks[1]["logged"][0] and ranks[0]["none"] == {}
    for key, value in ranks[0]["head"].items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics are each rank's own
            assert torch.equal(value, ranks[1]["head"][key]), key
    # Rank 1 added no weight: the steps are those of one process on rank 0's batches.
    from selfsup.data import ImageDataset
    from selfsup.eval.probe import OnlineProbe
    from selfsup.views import EvalView

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    network.num_features = 8
    images = torch.randint(0, 255, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 3
    alone = OnlineProbe(network, 8, 3, EvalView(8, (0.5,), (0.25,)), ImageDataset(images, labels, ["a", "b", "c"]),
                        fraction=1.0, device=torch.device("cpu"))
    for _ in range(3):
        alone.step(images, labels)
    assert torch.allclose(alone.head.state_dict()["1.weight"], ranks[1]["head"]["1.weight"], atol=1e-6)


def _preempted_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import signal

    from selfsup.engine import Engine, Preempted, dist
    from selfsup.recipes.pretrain import pretrain

    original = Engine.train_step

    def train_step(self, *batch):
        if rank == 1 and self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # only one process is warned
        return original(self, *batch)

    Engine.train_step = train_step
    try:
        pretrain(tiny_config(Path(root), train__batch_size=GLOBAL_BATCH, train__epochs=3), Path(out) / "run",
                 quiet=True)
        stopped = None
    except Preempted as stop:
        stopped = [stop.step, stop.exit_status]
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(stopped))
    dist.destroy()


def test_a_signal_to_one_process_stops_every_process_after_the_same_step(mnist_root, tmp_path):
    mp.spawn(_preempted_worker, args=(2, free_port(), str(mnist_root), str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [[3, 143], [3, 143]]
    assert checkpoint.load(tmp_path / "run")["step"] == 3


def test_two_nodes_of_one_process_each_equal_two_processes_on_one_node(mnist_root, tmp_path):
    """``torchrun --nnodes 2`` with a c10d rendezvous (two node agents on this machine, gloo) trains
    end to end and ends with the weights of the same world on one node (which the test above ties to
    one process on the concatenated batch)."""
    sets = [arg for item in tiny_overrides(mnist_root, train__epochs=1, train__precision="fp32")
            for arg in ("--set", item)]
    selfsup = ["-m", "selfsup", "pretrain", "--quiet"] + sets
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *selfsup, "--run-dir", str(tmp_path / "one-node")], capture_output=True, text=True,
                            timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "selfsup-test",
                               *selfsup, "--run-dir", str(tmp_path / "two-nodes")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(err[-2000:] for _, err in outputs)
    one, two = checkpoint.load(tmp_path / "one-node"), checkpoint.load(tmp_path / "two-nodes")
    assert two["world_size"] == 2 and two["step"] == one["step"] == 4
    for key, value in one["model"].items():
        assert torch.allclose(two["model"][key].float(), value.float(), rtol=1e-5, atol=1e-6), key


def _stream_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.engine import Engine, dist
    from selfsup.recipes.pretrain import pretrain

    original, seen = Engine.train_step, []

    def train_step(self, images, targets, index):
        seen.append([self.step, index.tolist()])
        return original(self, images, targets, index)

    Engine.train_step = train_step
    sets = {"data.name": "imagefolder", "data.root": root, "data.image_size": 16, "data.source": "stream",
            "data.workers": 2, "train.batch_size": 8, "train.epochs": 2, "train.knn_every": 0,
            "train.online_probe": "false"}
    pretrain(tiny_config(Path("/unused"), **sets), Path(out) / "run", quiet=True)
    (Path(out) / f"seen{rank}.json").write_text(json.dumps(seen))
    dist.destroy()


def test_two_processes_of_two_stream_workers_see_every_image_once_an_epoch(tmp_path, one_thread):
    folder = write_photos(tmp_path / "photos", count=17)  # 34 images: 2 ranks x 4 batches of 4, 2 left over
    mp.spawn(_stream_worker, args=(2, free_port(), str(folder), str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"seen{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in (0, 1):
        parts = [[i for step, index in rank_seen if step // 4 == epoch for i in index] for rank_seen in seen]
        assert len(parts[0]) == len(parts[1]) == 16 and not set(parts[0]) & set(parts[1])
        assert len(set(parts[0] + parts[1])) == 32
