"""One run per output folder: a second run is refused at once, naming the holder; a killed holder frees it."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from attnsae.lock import FolderBusy, hold
from tests.test_sae import batches_of, planted


def test_a_held_folder_refuses_a_second_run_until_released(tmp_path):
    with hold(tmp_path / "run", "training"):
        with pytest.raises(FolderBusy, match=rf"in use by attnsae training \(pid {os.getpid()}"):
            with hold(tmp_path / "run"):
                pass
    with hold(tmp_path / "run"):  # released
        pass


def test_kill_9_of_the_holder_frees_the_folder(tmp_path):
    code = f"import time; from attnsae.lock import hold\nwith hold({str(tmp_path / 'run')!r}, 'harvest'):\n" \
           "    print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusy, match=rf"attnsae harvest \(pid {proc.pid}"):
        with hold(tmp_path / "run"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.05)
    with hold(tmp_path / "run"):
        pass


def test_training_and_harvest_take_the_lock(tiny, windows, tmp_path):
    from attnsae.data import harvest
    from attnsae.sae import SAEConfig, TrainConfig, train_sae

    data, _ = planted(n=2000)
    cfg = TrainConfig(steps=5, batch_size=64, dtype="float32", hist_every=0)
    with hold(tmp_path / "sae_run"), pytest.raises(FolderBusy):
        train_sae(SAEConfig(d_in=32, d_sae=64), cfg, tmp_path / "sae_run", batches_of(data, 64), progress=False)
    assert not (tmp_path / "sae_run" / "train").exists()  # refused before any work
    with hold(tmp_path / "store"), pytest.raises(FolderBusy):
        harvest(tiny[0], windows, tmp_path / "store", ["blocks.0.attn.hook_z"], progress=False)
    assert not (tmp_path / "store" / "manifest.json").exists()
    store = harvest(tiny[0], windows, tmp_path / "store", ["blocks.0.attn.hook_z"], progress=False)
    assert len(store) == len(windows) * (windows.shape[1] - 1) and np.all(store.windows() == windows)
