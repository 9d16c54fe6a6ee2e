"""torch.distributed on this machine: 2 processes on CPU with gloo. Data-parallel training equals one process on the
same global batches; distributed modules equal the one-process many-SAE run; a distributed harvest equals one
harvest; a rank that dies stops the others with a clear error, and the run resumes (with another number of ranks)."""

import os
import re
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from attnsae import distributed
from attnsae.data import ActivationStore, StreamedActivations, harvest
from attnsae.models import from_hf
from attnsae.sae import SAEConfig, TrainConfig, load_sae, sae_config_for
from attnsae.sae.many import train_saes
from attnsae.sae.recipes import RECIPES
from attnsae.sae.trainer import Trainer

from .conftest import hf_tiny
from .test_sae import batches_of, planted

TIMEOUT_S = 30  # a dead rank is noticed at once (closed connection); this bounds a hang


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        distributed.init("gloo", timeout_s=TIMEOUT_S)
        fn(*args)
    except BaseException as e:  # the parent reads why a rank stopped
        (Path(out) / f"error_rank{rank}.txt").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    finally:
        distributed.shutdown()


def run_ranks(fn, *args, out, world=2) -> list[int]:
    """Run fn(*args) in `world` spawned processes joined with gloo; their exit codes."""
    ctx = mp.start_processes(_entry, args=(world, _free_port(), fn, args, str(out)), nprocs=world, join=False,
                             start_method="spawn")
    for p in ctx.processes:
        p.join(120)
    return [p.exitcode for p in ctx.processes]


def errors(out) -> dict[int, str]:
    return {int(p.stem[len("error_rank"):]): p.read_text() for p in Path(out).glob("error_rank*.txt")}


# ---- data parallel: the same SAE as one process, every recipe ----

RECIPE_RUNS = {  # short runs that exercise each recipe's batch-wide parts: resampling, AuxK on dead latents, thresholds
    "l1": {"l1_coeff": 0.5, "resample_every": 20, "n_resamples": 1, "resample_inputs": 256, "resample_warmup": 5},
    "topk": {"k": 3, "dead_window": 256, "resample_every": 20, "n_resamples": 1, "resample_inputs": 256},
    "batchtopk": {"k": 3, "dead_window": 256, "resample_every": 20, "n_resamples": 1, "resample_inputs": 256},
    "matryoshka_batchtopk": {"k": 3, "dead_window": 256, "firing_floor": 0.01},
    "jumprelu": {"l0_coeff": 0.1},
    "l1_decnorm": {"l1_coeff": 0.5},
}
assert set(RECIPE_RUNS) == set(RECIPES)


def _train_recipes(out, steps=40, die_at=None, recipes=tuple(RECIPE_RUNS)):
    """Every recipe on planted data, 64 inputs per global batch; each rank saves its SAE."""
    data, _ = planted(n=4096, d=16, n_feat=12)
    r = distributed.rank()
    for recipe in recipes:
        extra = RECIPE_RUNS[recipe]
        cfg = TrainConfig(recipe=recipe, steps=steps, batch_size=64, lr=3e-3, dtype="float32", checkpoint_every=10,
                          hist_every=0, **extra)
        sae_cfg = SAEConfig(d_in=16, d_sae=48, architecture=RECIPES[recipe].architecture, k=extra.get("k"))
        batches = batches_of(data, 64)
        if die_at is not None and r == 1:
            batches = _dying(batches, die_at)
        tr = Trainer(sae_cfg, cfg, Path(out) / recipe, batches, progress=False, data_parallel=True,
                     writer=distributed.is_main())
        sae = tr.train()
        save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, str(Path(out) / f"{recipe}_rank{r}.safetensors"))


def _dying(batches_from, step):
    """Batches that kill the process (as kill -9 would) when asked for batch `step`."""
    def from_step(start):
        for s, b in enumerate(batches_from(start), start):
            if s == step:
                os._exit(1)
            yield b
    return from_step


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_data_parallel_training_equals_one_process_for_every_recipe(tmp_path):
    _train_recipes(tmp_path / "one")
    assert run_ranks(_train_recipes, tmp_path / "two", out=tmp_path) == [0, 0], errors(tmp_path)
    for recipe in RECIPES:
        one = load_file(str(tmp_path / "one" / f"{recipe}_rank0.safetensors"))
        ranks = [load_file(str(tmp_path / "two" / f"{recipe}_rank{r}.safetensors")) for r in range(2)]
        assert _max_diff(ranks[0], ranks[1]) == 0, recipe  # every rank holds the same SAE
        assert _max_diff(one, ranks[0]) < 1e-5, (recipe, _max_diff(one, ranks[0]))
    # only rank 0 wrote the checkpoint, and it is the run's
    assert (tmp_path / "two" / "topk" / "checkpoint" / "state.json").exists()


def test_a_dead_rank_stops_the_others_with_a_clear_error_and_the_run_resumes_on_one_process(tmp_path):
    codes = run_ranks(_train_recipes, tmp_path / "run", 40, 25, out=tmp_path)
    assert codes[1] == 1 and codes[0] != 0
    err = errors(tmp_path)[0].splitlines()[0]
    assert err.startswith("RankFailed: rank 0 of 2: another rank stopped") and "Re-run the same command" in err
    # rank 0 wrote the step-20 checkpoint of the first recipe; one process resumes from it (a different world size)
    _train_recipes(tmp_path / "run")
    _train_recipes(tmp_path / "fresh")
    recipe = next(iter(RECIPES))
    a = load_file(str(tmp_path / "run" / f"{recipe}_rank0.safetensors"))
    b = load_file(str(tmp_path / "fresh" / f"{recipe}_rank0.safetensors"))
    assert _max_diff(a, b) < 1e-5


# ---- many SAEs from one stream: modules and data layouts equal one process ----

HOOKS = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.1.attn.hook_q[2]"]


def _tiny_stream_run(out, mode):
    torch.manual_seed(0)
    model = from_hf(hf_tiny("llama"), weights="random")
    model.cfg.name = "tiny-llama"
    windows = np.random.default_rng(0).integers(3, 101, size=(48, 16)).astype(np.int32)
    windows[:, 0] = 0
    lay = distributed.layout(HOOKS, mode, 60)
    stream = StreamedActivations(model, windows, HOOKS, chunk_windows=8, layout=lay)
    cfg = TrainConfig(recipe="batchtopk", k=4, expansion=2, steps=30, batch_size=60, lr=3e-3, dtype="float32",
                      checkpoint_every=10, hist_every=0, dead_window=300)
    meta = stream.meta("test")
    sae_cfgs = {h: sae_config_for(cfg, stream.widths[h], h, meta) for h in HOOKS}
    train_saes(sae_cfgs, cfg, {h: Path(out) / f"h{i}" for i, h in enumerate(HOOKS)}, stream, progress=False, layout=lay)


@pytest.mark.parametrize("mode", ["modules", "data"])
def test_distributed_many_sae_training_equals_one_process(tmp_path, mode):
    _tiny_stream_run(tmp_path / "one", "auto")
    assert run_ranks(_tiny_stream_run, tmp_path / "two", mode, out=tmp_path) == [0, 0], errors(tmp_path)
    for i in range(len(HOOKS)):
        one = load_sae(tmp_path / "one" / f"h{i}" / "sae").state_dict()
        two = load_sae(tmp_path / "two" / f"h{i}" / "sae").state_dict()
        assert _max_diff(one, two) < 1e-5, (mode, i, _max_diff(one, two))


def test_layout_choice_and_its_refusals(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 2)
    assert distributed.layout(HOOKS).mode == "modules"
    assert distributed.layout(HOOKS[:1]).mode == "data"
    lay = distributed.layout(HOOKS, "modules")
    assert [lay.owner(h) for h in HOOKS] == [0, 1, 0] and lay.owned(1) == [HOOKS[1]]
    with pytest.raises(ValueError, match="at least as many hooks as ranks"):
        distributed.layout(HOOKS[:1], "modules")
    with pytest.raises(ValueError, match="does not split evenly over 2 ranks"):
        distributed.layout(HOOKS, "data", batch_size=63)
    assert [distributed.span(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]


# ---- distributed harvest ----

def _harvest(root, die_at_shard=None):
    model = from_hf(hf_tiny("gpt2"), weights="random")
    model.cfg.name = "tiny-gpt2"
    windows = np.random.default_rng(1).integers(3, 101, size=(22, 12)).astype(np.int32)
    if die_at_shard is not None and distributed.rank() == 1:
        from attnsae.data import store

        add, calls = store.StoreWriter.add_shard, []

        def add_shard(self, *a, **k):
            calls.append(1)
            if len(calls) == die_at_shard:
                os._exit(1)
            add(self, *a, **k)
        store.StoreWriter.add_shard = add_shard
    harvest(model, windows, root, ["blocks.0.attn.hook_z", "blocks.1.attn.hook_q[1]"], dtype="float32",
            windows_per_shard=4, progress=False, batch_size=3)


def test_a_distributed_harvest_equals_one_harvest_and_a_killed_rank_resumes(tmp_path):
    _harvest(tmp_path / "one")
    codes = run_ranks(_harvest, tmp_path / "two", 2, out=tmp_path)
    assert codes[1] == 1 and codes[0] != 0
    assert "another rank stopped" in errors(tmp_path)[0]
    assert not (tmp_path / "two" / "manifest.json").exists()  # nothing merged from a partial harvest
    assert sorted(p.name for p in (tmp_path / "two").glob("manifest.*.json")) == ["manifest.rank0of2.json",
                                                                                  "manifest.rank1of2.json"]
    assert run_ranks(_harvest, tmp_path / "two", out=tmp_path) == [0, 0], errors(tmp_path)
    one, two = ActivationStore(tmp_path / "one"), ActivationStore(tmp_path / "two")  # checksums verified
    assert len(two.shards) == 3 + 3 and not list((tmp_path / "two").glob("manifest.rank*"))
    for hook in one.hooks:
        assert torch.equal(one.all_rows(hook), two.all_rows(hook))
    # a finished distributed store is reused as it is, by one process or by ranks
    _harvest(tmp_path / "two")
    # a partial distributed harvest cannot be resumed by one process, nor by another number of ranks
    part = tmp_path / "part"
    run_ranks(_harvest, part, 2, out=tmp_path)
    with pytest.raises(Exception, match="started under torchrun"):
        _harvest(part)


def _check_not_shared(root):
    distributed.check_shared(Path(root) / f"node{distributed.rank()}")


def test_a_folder_not_shared_between_ranks_is_named(tmp_path):
    assert run_ranks(_check_not_shared, tmp_path, out=tmp_path) == [1, 1]
    for msg in errors(tmp_path).values():
        assert "is not one folder shared by every rank" in msg.splitlines()[0]


def test_nccl_without_gpus_is_refused(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="NCCL needs CUDA GPUs"):
        distributed.init("nccl")


# ---- the command line under torchrun ----

def _torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(_free_port()), "-m", "attnsae", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_layers_under_torchrun_equals_one_process(tmp_path):
    """`torchrun ... -m attnsae layers`: the modules layout from the command line, on a local GPT-2 folder."""
    from attnsae.models import gpt2_tokenizer

    hf_tiny("gpt2", vocab=50257).save_pretrained(tmp_path / "gpt2")
    gpt2_tokenizer().save_pretrained(tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on.\n" * 200)
    common = ["--model", str(tmp_path / "gpt2"), "--corpus", str(corpus), "--ctx", "32", "--steps", "12",
              "--batch-size", "62", "--expansion", "2", "--k", "4", "--chunk-windows", "8", "--dtype", "float32",
              "--model-dtype", "float32", "--device", "cpu"]
    r = _torchrun("layers", *common, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "attnsae", "layers", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert one.returncode == 0, one.stderr
    for layer in (0, 1):
        a, b = (load_sae(tmp_path / x / f"L{layer}" / "sae").state_dict() for x in ("one", "two"))
        assert _max_diff(a, b) < 1e-5


def test_train_under_torchrun_equals_one_process_and_other_commands_are_refused(tmp_path):
    _harvest(tmp_path / "store")
    common = ["--store", str(tmp_path / "store"), "--recipe", "topk", "--k", "4", "--steps", "20", "--batch-size", "64",
              "--expansion", "2", "--dtype", "float32"]
    r = _torchrun("train", *common, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("SAE saved to") == 1  # rank 0 prints
    one = subprocess.run([sys.executable, "-m", "attnsae", "train", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    a, b = (load_sae(tmp_path / x / "sae").state_dict() for x in ("one", "two"))
    assert _max_diff(a, b) < 1e-5
    # one line from whichever rank fails first: torchrun may stop the other before it prints (then it prints its
    # own summary of the failed ranks, traceback included)
    r = _torchrun("eval", "--sae", str(tmp_path / "one" / "sae"), "--out", str(tmp_path / "e"))
    assert r.returncode != 0
    assert re.search(r"attnsae eval \(rank [01]\): error: this command runs in one process; launch it without torchrun",
                     r.stderr)
    assert "attnsae/" not in r.stderr  # no traceback through our code
    if not torch.cuda.is_available():
        r = _torchrun("train", *common, "--out", str(tmp_path / "n"), "--dist-backend", "nccl")
        assert r.returncode != 0 and re.search(r"attnsae train \(rank [01]\): error: NCCL needs CUDA GPUs", r.stderr)
        assert "attnsae/" not in r.stderr
