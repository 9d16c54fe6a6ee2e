import json
import subprocess
import sys

import pytest

from .conftest import hf_tiny


def attnsae(*args, env=None):
    return subprocess.run([sys.executable, "-m", "attnsae.cli", *args], capture_output=True, text=True, env=env)


def test_help_explains_itself():
    r = attnsae("--help")
    assert r.returncode == 0
    for word in ("main", "harvest", "train", "eval", "sweep", "hooks", "smollm2-135m"):
        assert word in r.stdout
    r = attnsae("train", "--help")
    assert "--recipe" in r.stdout and "l1_decnorm" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--store", "/nonexistent/store", "--out", "/tmp/x"], "not an activation store"),
    (["eval", "--sae", "/nonexistent/sae", "--out", "/tmp/x"], "not an SAE folder"),
    (["hooks", "--model", "/nonexistent/model.gguf"], "no GGUF file"),
])
def test_bad_input_is_a_one_line_error_not_a_traceback(args, message):
    r = attnsae(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_harvest_train_eval_from_the_command_line_on_a_local_gpt2(tmp_path):
    """The GPT-2 code path end to end: a random-weight GPT-2 saved as a local HF folder with the real tokenizer."""
    import os

    from attnsae.models import gpt2_tokenizer

    hf_tiny("gpt2", vocab=50257).save_pretrained(tmp_path / "gpt2")
    gpt2_tokenizer().save_pretrained(tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    env = {**os.environ, "ATTNSAE_HOME": os.environ.get("ATTNSAE_HOME", os.path.expanduser("~/.cache/attnsae")), "HF_HUB_OFFLINE": "1"}
    common = ["--model", str(tmp_path / "gpt2"), "--corpus", str(corpus), "--ctx", "32"]
    r = attnsae("harvest", *common, "--hook", "blocks.1.attn.hook_z", "--hook", "blocks.1.attn.hook_q[0]",
                "--out", str(tmp_path / "store"), "--model-dtype", "float32", env=env)
    assert r.returncode == 0, r.stderr
    r = attnsae("train", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"), "--steps", "30",
                "--batch-size", "64", "--l1", "0.5", "--expansion", "2", env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.1.attn.hook_z" and cfg["d_in"] == 64 and cfg["d_sae"] == 128
    r = attnsae("eval", "--sae", str(tmp_path / "run" / "sae"), "--model", str(tmp_path / "gpt2"), "--corpus", str(corpus),
                "--out", str(tmp_path / "report"), "--eval-windows", "4", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    fid = report["fidelity"]
    assert fid["ce_sae_with_error"] == pytest.approx(fid["ce_clean"], abs=1e-4)
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "density.png").exists()
    # training streamed straight from the model, no store
    r = attnsae("train", "--model", str(tmp_path / "gpt2"), "--corpus", str(corpus), "--hook", "blocks.0.attn.hook_z",
                "--ctx", "32", "--out", str(tmp_path / "streamed"), "--steps", "10", "--batch-size", "64", "--expansion", "2", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "streamed" / "sae" / "cfg.json").read_text())["hook_name"] == "blocks.0.attn.hook_z"
