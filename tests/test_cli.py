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


NO_SAE = ["--sae", "/nonexistent/sae"]
OUT = ["--out", "/tmp/attnsae-never-written"]


def _hostile_files() -> tuple[str, str]:
    """(an SAE folder whose weights are not safetensors, a reference .pt that pickles a shell command)."""
    import os
    import pickle
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="attnsae-hostile-"))
    (root / "corrupt").mkdir()
    (root / "corrupt" / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8, "architecture": "standard"}))
    (root / "corrupt" / "sae_weights.safetensors").write_bytes(os.urandom(100))

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch /tmp/attnsae-pwned",))

    (root / "run.pt").write_bytes(pickle.dumps({"W_enc": Payload()}))
    (root / "run_cfg.json").write_text(json.dumps({"model_name": "gpt2-small", "layer": 1}))
    return str(root / "corrupt"), str(root / "run.pt")


CORRUPT_SAE, PICKLED_SAE = _hostile_files()


# every command, with a missing file and with numbers out of range: one line on stderr, exit 2, nothing written
@pytest.mark.parametrize("args,message", [
    (["train", "--store", "/nonexistent/store", "--out", "/tmp/x"], "not an activation store"),
    (["eval", "--sae", "/nonexistent/sae", "--out", "/tmp/x"], "not an SAE folder"),
    (["eval", "--sae", CORRUPT_SAE, *OUT], "not a readable .safetensors file"),
    (["eval", "--sae", PICKLED_SAE, *OUT], "refusing to unpickle"),
    (["report", "--sae", "nobody/no-such-repo/layer_1", *OUT], "hub"),
    (["eval", "--sae", "tests/no-such-run/sae", *OUT], "tests/no-such-run/sae is not an SAE folder: it does not exist"),
    (["hooks", "--model", "/nonexistent/model.gguf"], "no GGUF file"),
    (["main", "--ctx", "1", *OUT], "--ctx: 1 is out of range"),
    (["main", "--steps", "0", *OUT], "--steps: 0 is out of range"),
    (["main", "--train-windows", "-5", *OUT], "--train-windows: -5 is out of range"),
    (["main", "--recipe", "nonsense", *OUT], "invalid choice: 'nonsense'"),
    (["sweep", "--store", "/nonexistent/store", "--l1", "-1", *OUT], "--l1: -1 is out of range"),
    (["sweep", "--store", "/nonexistent/store", "--l1", "2", *OUT], "not an activation store"),
    (["layers", "--layers", "-3", *OUT], "--layers: -3 is out of range"),
    (["layers", "--k", "0", *OUT], "--k: 0 is out of range"),
    (["layers", "--chunk-windows", "0", *OUT], "--chunk-windows: 0 is out of range"),
    (["every-head", "--chunk-windows", "-2", *OUT], "--chunk-windows: -2 is out of range"),
    (["every-head", "--top", "0", *OUT], "--top: 0 is out of range"),
    (["every-head", "--sparsity-windows", "-1", *OUT], "--sparsity-windows: -1 is out of range"),
    (["every-head", "--rank-by", "vibes", *OUT], "invalid choice: 'vibes'"),
    (["every-head", "--layers", "99", "--device", "cpu", "--model", "/nonexistent/m.gguf", *OUT], "no GGUF file"),
    (["hooks", "--layer", "-1"], "--layer: -1 is out of range"),
    (["hooks", "--device", "tpu"], "device 'tpu': give auto"),
    (["main", "--device", "cuda:7", *OUT], "device 'cuda:7' is not available"),
    (["harvest", "--windows", "0", *OUT], "--windows: 0 is out of range"),
    (["harvest", "--max-tokens", "many", *OUT], "'many' is not a whole number"),
    (["train", "--store", "/nonexistent/store", "--lr", "nan", *OUT], "--lr: nan is not a finite number"),
    (["train", "--store", "/nonexistent/store", "--batch-size", "-64", *OUT], "--batch-size: -64 is out of range"),
    (["train", "--store", "/nonexistent/store", "--seed", "-1", *OUT], "--seed: -1 is out of range"),
    (["train", "--store", "/nonexistent/store", "--lr-warmup", "-1", *OUT], "--lr-warmup: -1 is out of range"),
    (["main", "--lr-warmup", "1e9", *OUT], "'1e9' is not a whole number"),
    (["train", *OUT], "train needs --store, or --model and --hook"),
    (["eval", *NO_SAE, "--eval-windows", "0", *OUT], "--eval-windows: 0 is out of range"),
    (["report", *NO_SAE, *OUT], "not an SAE folder"),
    (["report", *NO_SAE, "--k", "0", *OUT], "--k: 0 is out of range"),
    (["dfa", *NO_SAE, "--feature", "-1", *OUT], "--feature: -1 is out of range"),
    (["dfa", *NO_SAE, "--feature", "3", "--threshold", "-0.5", *OUT], "--threshold: -0.5 is out of range"),
    (["rate", "sample", *NO_SAE, "--n", "0", *OUT], "--n: 0 is out of range"),
    (["rate", "score", "/nonexistent/ratings.json"], "no such ratings file"),
    (["head-scores", "--n", "0", *OUT], "--n: 0 is out of range"),
    (["ablate-heads", "--layer", "-1", *OUT], "--layer: -1 is out of range"),
    (["induction", "--threshold", "2", *OUT], "--threshold: 2 is out of range"),
    (["ioi", "--min-attn", "1.5", *OUT], "--min-attn: 1.5 is out of range"),
    (["ioi", "--sae", "/nonexistent/sae", *OUT], "not an SAE folder"),
    (["induction-features", *NO_SAE, "--threshold", "-0.1", *OUT], "--threshold: -0.1 is out of range"),
    (["induction-features", *NO_SAE, *OUT], "not an SAE folder"),
    (["case-study", *NO_SAE, "--feature", "1", "--proxy", "token:x", "--bins", "0", *OUT], "--bins: 0 is out of range"),
    (["polysemanticity", *NO_SAE, "--k", "0", *OUT], "--k: 0 is out of range"),
    (["polysemanticity", *NO_SAE, "--windows", "1e9", *OUT], "'1e9' is not a whole number"),
    (["train", "--store", "/nonexistent/store", "--recipe", "l1", "--k", "8", *OUT], "--k does not apply to --recipe l1"),
    (["main", "--recipe", "topk", "--l1", "2", *OUT], "--l1 does not apply to --recipe topk"),
    (["sweep", "--store", "/nonexistent/store", "--recipe", "topk", "--l1", "2", *OUT], "--l1 does not apply to --recipe topk"),
    (["layers", "--recipe", "batchtopk", "--l0-coeff", "1", *OUT], "--l0-coeff does not apply to --recipe batchtopk"),
    (["train", "--store", "/nonexistent/store", "--recipe", "jumprelu", "--prefixes", "0.5", *OUT],
     "--prefixes does not apply to --recipe jumprelu"),
    (["train", "--store", "/nonexistent/store", "--recipe", "jumprelu", "--bandwidth", "0", *OUT], "--bandwidth: 0 is out of"),
    (["train", "--store", "/nonexistent/store", "--recipe", "jumprelu", "--l0-coeff", "-1", *OUT], "--l0-coeff: -1 is out of"),
    (["train", "--store", "/nonexistent/store", "--prefixes", "1.5", *OUT], "--prefixes: 1.5 is out of range"),
    (["train", "--store", "/nonexistent/store", "--recipe", "matryoshka_batchtopk", "--prefixes", "0.5", "0.25", *OUT],
     "prefixes must be fractions of d_sae rising strictly within (0, 1]"),
    (["trace", *NO_SAE, "--prompt", "hi", *OUT], "not an SAE folder"),
    (["trace", *NO_SAE, "--prompt", "hi", "--depth", "0", *OUT], "--depth: 0 is out of range"),
    (["trace", *NO_SAE, "--prompt", "hi", "--sources", "99", *OUT], "--sources: 99 is out of range"),
    (["trace", *NO_SAE, "--prompt", "hi", "--feature", "1", "x", "3", *OUT], "invalid int value: 'x'"),
    (["trace", *NO_SAE, *OUT], "the following arguments are required: --prompt"),
    (["explore", *NO_SAE, "--port", "0"], "--port: 0 is out of range"),
    (["explore", *NO_SAE], "not an SAE folder"),
    (["explore", *NO_SAE, "--dashboards", "/nonexistent/report"], "no features/ folder there"),
    (["qk-pairs", *NO_SAE, "--layer", "1", "--head", "0", *OUT], "not an SAE folder"),
    (["qk-pairs", *NO_SAE, "--layer", "1", *OUT], "the following arguments are required: --head"),
    (["qk-pairs", *NO_SAE, "--layer", "1", "--head", "0", "--ioi", "5000", *OUT], "--ioi: 5000 is out of range"),
    (["qk-pairs", *NO_SAE, "--layer", "1", "--head", "0", "--to", "end", *OUT], "invalid choice: 'end'"),
    (["layers", "--init-subspace", "1.5", *OUT], "--init-subspace: 1.5 is out of range"),
    (["layers", "--lr-decay", "-0.1", *OUT], "--lr-decay: -0.1 is out of range"),
    (["layers", "--firing-floor", "2", *OUT], "--firing-floor: 2 is out of range"),
    (["layers", "--firing-floor", "1", *OUT], "firing_floor must be a fraction of inputs in [0, 1)"),
    (["train", "--store", "/nonexistent/store", "--recipe", "topk", "--firing-floor", "0.001", *OUT],
     "--firing-floor does not apply to --recipe topk"),
    (["qk-study", *OUT], "the following arguments are required: --head"),
    (["qk-study", "--head", "18.6", "--n-top", "0", *OUT], "--n-top: 0 is out of range"),
    (["qk-study", "--head", "18.6", "--scale", "-1", *OUT], "--scale: -1 is out of range"),
    (["qk-study", "--head", "18.6", "--recipe", "l1", "--k", "4", *OUT], "--k does not apply to --recipe l1"),
    (["qk-study", "--head", "18.6", "--model", "/nonexistent/m.gguf", *OUT], "no GGUF file"),
    (["layers", "--distribute", "pipeline", *OUT], "invalid choice: 'pipeline'"),
    (["layers", "--resample-every", "0", *OUT], "--resample-every: 0 is out of range"),
    (["train", "--store", "/nonexistent/store", "--recipe", "jumprelu", "--resample-every", "100", *OUT],
     "--resample-every does not apply to --recipe jumprelu"),
    (["every-head", "--dist-backend", "mpi", *OUT], "invalid choice: 'mpi'"),
    (["train", "--store", "/nonexistent/store", "--dist-timeout", "0", *OUT], "--dist-timeout: 0 is out of range"),
    (["harvest", "--dist-timeout", "1e9", *OUT], "'1e9' is not a whole number"),
])
def test_bad_input_is_a_one_line_error_not_a_traceback(args, message):
    r = attnsae(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not __import__("os").path.exists(OUT[1]) and not __import__("os").path.exists("/tmp/attnsae-pwned")


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    """A random-weight GPT-2 saved as a local HF folder with the real tokenizer, a corpus, and an SAE
    trained on it from the command line: (tmp folder, the common model/corpus args, env)."""
    import os

    from attnsae.models import gpt2_tokenizer

    tmp_path = tmp_path_factory.mktemp("gpt2_run")
    hf_tiny("gpt2", vocab=50257).save_pretrained(tmp_path / "gpt2")
    gpt2_tokenizer().save_pretrained(tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. A <b>bold</b> & \"quoted\" line.\n" * 300)
    env = {**os.environ, "ATTNSAE_HOME": os.environ.get("ATTNSAE_HOME", os.path.expanduser("~/.cache/attnsae")),
           "HF_HUB_OFFLINE": "1"}
    common = ["--model", str(tmp_path / "gpt2"), "--corpus", str(corpus)]
    r = attnsae("harvest", *common, "--ctx", "32", "--hook", "blocks.1.attn.hook_z", "--hook", "blocks.1.attn.hook_q[0]",
                "--out", str(tmp_path / "store"), "--model-dtype", "float32", env=env)
    assert r.returncode == 0, r.stderr
    r = attnsae("train", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"), "--steps", "30",
                "--batch-size", "64", "--l1", "0.5", "--expansion", "2", env=env)
    assert r.returncode == 0, r.stderr
    return tmp_path, common, env


def test_harvest_train_eval_from_the_command_line_on_a_local_gpt2(gpt2_run):
    """The GPT-2 code path end to end."""
    tmp_path, common, env = gpt2_run
    cfg = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.1.attn.hook_z" and cfg["d_in"] == 64 and cfg["d_sae"] == 128
    r = attnsae("eval", "--sae", str(tmp_path / "run" / "sae"), *common, "--out", str(tmp_path / "report"),
                "--eval-windows", "4", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    fid = report["fidelity"]
    assert fid["ce_sae_with_error"] == pytest.approx(fid["ce_clean"], abs=1e-4)
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "density.png").exists()
    # training streamed straight from the model, no store
    r = attnsae("train", *common, "--hook", "blocks.0.attn.hook_z", "--ctx", "32", "--out", str(tmp_path / "streamed"),
                "--steps", "10", "--batch-size", "64", "--expansion", "2", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "streamed" / "sae" / "cfg.json").read_text())["hook_name"] == "blocks.0.attn.hook_z"


def test_trace_writes_top_features_and_an_rdfa_tree(gpt2_run):
    tmp_path, common, env = gpt2_run
    sae = str(tmp_path / "run" / "sae")
    out = tmp_path / "trace"
    r = attnsae("trace", "--sae", sae, "--model", common[1], "--prompt", "The quick brown fox jumps", "--k", "3",
                "--feature", "1", "0", "-1", "--depth", "1", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    t = json.loads((out / "trace.json").read_text())
    assert t["tokens"][1:] == ["The", " quick", " brown", " fox", " jumps"] and t["layers"] == [1]
    assert len(t["top"]["1"]) == 6 and all(len(fs) <= 3 for fs in t["top"]["1"])
    tree = t["tree"]
    assert (tree["layer"], tree["feature"], tree["dest"]) == (1, 0, 5) and t["run"] == {"model_dtype": "float32"}
    assert tree["pre"] == pytest.approx(tree["bias"] + sum(tree["by_head"]), abs=1e-4)
    assert "RDFA" in r.stdout and "<- source" in r.stdout
    # a residual-stream SAE (step 3), trained by the same trainer streamed from the model
    r = attnsae("train", *common, "--hook", "blocks.1.hook_resid_pre", "--ctx", "32", "--out", str(tmp_path / "resid"),
                "--steps", "10", "--batch-size", "64", "--expansion", "2", env=env)
    assert r.returncode == 0, r.stderr
    r = attnsae("trace", "--sae", sae, "--resid-sae", str(tmp_path / "resid" / "sae"), "--model", common[1], "--prompt",
                "The quick brown fox jumps", "--feature", "1", "0", "5", "--depth", "1", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    t = json.loads((out / "trace.json").read_text())
    assert t["resid_layers"] == [1]
    for s in t["tree"]["sources"]:
        res = s["parts"]["resid"]  # all its features (only the top 3 listed), error, bias and the value bias
        assert res["total"] == pytest.approx(s["value"], rel=1e-4, abs=1e-5) and res["n_active"] >= len(res["features"])
    for argv, message in [(["--feature", "0", "1", "2"], "no attention SAE at layer 0 (layers with one: [1])"),
                          (["--feature", "1", "999", "2"], "feature 999 out of range"),
                          (["--feature", "1", "0", "6"], "position 6 out of range"),
                          (["--prompt", ""], "the prompt is empty"),
                          (["--resid-sae", sae], "reads blocks.1.attn.hook_z, not blocks.1.hook_resid_pre")]:
        args = ["--prompt", "The quick brown fox jumps", *argv] if argv[0] != "--prompt" else argv
        r = attnsae("trace", "--sae", sae, "--model", common[1], *args, "--out", str(tmp_path / "bad"), env=env)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()
    # a head's QK score over IOI prompts into resid-SAE feature pairs: the shares of all pairs sum to 1
    resid = str(tmp_path / "resid" / "sae")
    r = attnsae("qk-pairs", "--sae", sae, "--resid-sae", resid, "--model", common[1], "--layer", "1", "--head", "2",
                "--resid", "--ioi", "7", "--to", "s2", "--top", "3", "--out", str(tmp_path / "qk"), env=env)
    assert r.returncode == 0, r.stderr
    q = json.loads((tmp_path / "qk" / "qk_pairs.json").read_text())
    assert len(q["prompts"]) == 7 and q["variance"]["share_sum"] == pytest.approx(1.0, abs=1e-6)
    assert len(q["variance"]["top"]) == 3 and all(t["key"].startswith("resid") for t in q["variance"]["top"])
    assert "of the variance" in r.stdout
    for argv, message in [(["--layer", "1", "--head", "9"], "head 9 out of range"),
                          (["--layer", "7", "--head", "0"], "--layer 7 out of range"),
                          (["--layer", "0", "--head", "0", "--resid"], "--resid needs a --resid-sae at layer 0"),
                          (["--layer", "1", "--head", "0", "--ioi", "1"], "--ioi: 1 is out of range")]:
        r = attnsae("qk-pairs", "--sae", sae, "--resid-sae", resid, "--model", common[1], *argv, "--out",
                    str(tmp_path / "bad"), env=env)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()


def test_report_dfa_and_rating_from_the_command_line(gpt2_run):
    tmp_path, common, env = gpt2_run
    sae = str(tmp_path / "run" / "sae")
    r = attnsae("report", "--sae", sae, *common, "--windows", "40", "--k", "3", "--random", "2", "--model-dtype", "float32",
                "--out", str(tmp_path / "heads"), env=env)
    assert r.returncode == 0, r.stderr
    assert "feature-tokens/s" in r.stdout
    rep = json.loads((tmp_path / "heads" / "report.json").read_text())
    assert len(rep["layers"][0]["heads"]) == 4 and rep["n_tokens"] == 40 * 31
    for h in range(4):
        assert (tmp_path / "heads" / "heads" / f"L1H{h}.html").exists()
    # the same from the store: the one pass reads activations instead of running the model
    r = attnsae("report", "--sae", sae, "--model", common[1], "--store", str(tmp_path / "store"), "--k", "2",
                "--out", str(tmp_path / "heads_store"), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "heads_store" / "report.json").read_text())["timing"]["source"] == "store"

    feature = rep["layers"][0]["heads"][0]["top"][0]["feature"]
    r = attnsae("dfa", "--sae", sae, *common, "--windows", "20", "--feature", str(feature), "--threshold", "0", "0.01",
                "--source-token", " fox", "--out", str(tmp_path / "dfa"), env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "dfa" / "dfa.json").read_text())
    assert list(d) == ["feature", "layer", "n_heads", "thresholds", "source_tokens", "run"] and d["source_tokens"] == [" fox"]
    assert sum(d["thresholds"][0]["head_fve"]) == pytest.approx(1.0, abs=1e-4)
    assert all(isinstance(t, str) and isinstance(i, int) for t, i, _ in d["thresholds"][0]["source_token_fve"])
    assert "act > 0 (" in r.stdout  # the summary
    assert (tmp_path / "dfa" / "head_fve.png").exists()
    # from the store: its first --windows windows
    r = attnsae("dfa", "--sae", sae, "--model", common[1], "--store", str(tmp_path / "store"), "--windows", "5", "--feature",
                str(feature), "--out", str(tmp_path / "dfa_store"), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "dfa_store" / "dfa.json").read_text())["thresholds"][0]["n_tokens"] <= 5 * 31
    r = attnsae("dfa", "--sae", sae, *common, "--feature", "0", "--source-token", " jumps over", "--out", str(tmp_path / "x"),
                env=env)
    assert r.returncode == 2 and "single tokens" in r.stderr

    rate = tmp_path / "rate"
    r = attnsae("rate", "sample", "--sae", sae, *common, "--windows", "40", "--n", "3", "--out", str(rate), env=env)
    assert r.returncode == 0, r.stderr
    assert (rate / "rate.html").exists()
    r = subprocess.run([sys.executable, "-m", "attnsae.cli", "rate", "ask", str(rate / "ratings.json")], input="y\nn\ny\n",
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "2/3 interpretable = 66.7%" in r.stdout
    r = attnsae("rate", "sample", "--sae", sae, *common, "--windows", "40", "--n", "3", "--out", str(rate), env=env)
    assert r.returncode == 2 and "exists" in r.stderr  # never overwrites verdicts
    r = attnsae("rate", "sample", "--sae", sae, "--sae", sae, *common, "--n", "3", "--out", str(tmp_path / "rate2"), env=env)
    assert r.returncode == 2 and "takes one --sae" in r.stderr
    # a head report needs a whole layer's hook_z SAE
    q = tmp_path / "q_sae"
    r = attnsae("train", "--store", str(tmp_path / "store"), "--hook", "blocks.1.attn.hook_q[0]", "--out", str(q), "--steps", "5",
                "--batch-size", "64", "--expansion", "2", env=env)
    assert r.returncode == 0, r.stderr
    r = attnsae("report", "--sae", str(q / "sae"), *common, "--windows", "8", "--out", str(tmp_path / "bad"), env=env)
    assert r.returncode == 2 and "whole layer's attn.hook_z" in r.stderr and "Traceback" not in r.stderr


def test_generated_report_renders_in_headless_chromium(gpt2_run):
    """The real pages written by `attnsae report`, opened in Chromium: no script errors, the parts are there."""
    from .test_html import ARGS, CHROMIUM, _playwright

    sync_playwright = _playwright()
    tmp_path, common, env = gpt2_run
    site = tmp_path / "heads"
    if not (site / "index.html").exists():
        r = attnsae("report", "--sae", str(tmp_path / "run" / "sae"), *common, "--windows", "40", "--k", "3",
                    "--random", "2", "--out", str(site), env=env)
        assert r.returncode == 0, r.stderr
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((site / "index.html").as_uri())
        page.locator("a", has_text="H2").first.click()  # index -> head page
        assert page.url.endswith("heads/L1H2.html")
        assert page.locator("table.list tbody tr").count() == 3
        page.locator("table.list tbody tr a").first.click()  # head page -> dashboard
        assert "/features/L1/F" in page.url
        assert page.locator("#top-examples .ex").count() >= 1
        assert page.locator("rect.bar").count() >= 4
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        browser.close()
    assert errors == []


def test_head_role_experiments_from_the_command_line(gpt2_run):
    """head-scores, ablate-heads and induction (synthetic and real text) on the random GPT-2."""
    tmp_path, common, env = gpt2_run
    model = common[:2]
    r = attnsae("head-scores", *model, "--n", "20", "--batch", "4", "--out", str(tmp_path / "hs"), env=env)
    assert r.returncode == 0, r.stderr
    scores = json.loads((tmp_path / "hs" / "head_scores.json").read_text())
    assert {"induction", "previous", "duplicate"} <= set(scores)
    r = attnsae("ablate-heads", *model, "--layer", "1", "--n", "4", "--out", str(tmp_path / "abl"), env=env)
    assert r.returncode == 0, r.stderr
    r = attnsae("induction", *common, "--head", "1.0", "--head", "0.2", "--n", "4", "--corpus-windows", "6", "--ctx", "32",
                "--threshold", "0.2", "--out", str(tmp_path / "ind"), env=env)
    assert r.returncode == 0, r.stderr
    real = json.loads((tmp_path / "ind" / "corpus_prefix.json").read_text())
    assert set(real["heads"]) == {"1.0", "0.2"}
    assert all(sum(h["share"]) == pytest.approx(1.0) for h in real["heads"].values() if sum(h["counts"]))
    assert (tmp_path / "ind" / "corpus_prefix.png").exists() and (tmp_path / "ind" / "prefix_length.png").exists()
    r = attnsae("induction", *model, "--head", "5.0", "--out", str(tmp_path / "bad"), env=env)
    assert r.returncode == 2 and "has 2 layers x 4 heads" in r.stderr and "Traceback" not in r.stderr


def test_layers_trains_chosen_layers_from_one_stream_reuses_them_and_refuses_a_changed_recipe(gpt2_run):
    tmp_path, common, env = gpt2_run
    out = tmp_path / "layers"
    small = ["--ctx", "32", "--train-windows", "20", "--steps", "6", "--batch-size", "64", "--expansion", "2",
             "--chunk-windows", "8", "--model-dtype", "float32", "--out", str(out)]
    r = attnsae("layers", *common, *small, "--layers", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert not (out / "L0").exists() and not (out / "store").exists()  # only layer 1; streamed, nothing on disk
    cfg = json.loads((out / "L1" / "sae" / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.1.attn.hook_z" and cfg["architecture"] == "jumprelu"  # batchtopk, saved for SAELens
    stamp = (out / "L1" / "sae" / "sae_weights.safetensors").stat().st_mtime_ns
    r = attnsae("layers", *common, *small, env=env)  # every layer: layer 1 is reused, layer 0 trained
    assert r.returncode == 0, r.stderr
    assert (out / "L1" / "sae" / "sae_weights.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "L0" / "sae" / "cfg.json").read_text())["hook_name"] == "blocks.0.attn.hook_z"
    r = attnsae("layers", *common, *small[:-2], "--steps", "7", "--out", str(out), env=env)
    assert r.returncode == 2 and "trained with a different config" in r.stderr and "steps" in r.stderr
    r = attnsae("layers", *common, *small[:-2], "--store", "--out", str(tmp_path / "from_store"), env=env)
    assert r.returncode == 0, r.stderr
    store = json.loads((tmp_path / "from_store" / "store" / "manifest.json").read_text())
    assert sorted(store["hooks"]) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]  # one harvest, every layer
    huge = tmp_path / "huge"
    r = attnsae("layers", *common, *small[:-2], "--expansion", "2000000", "--out", str(huge), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "needs about" in r.stderr and "SAEs in training" in r.stderr and "--layers" in r.stderr
    assert not (huge / "L0").exists()  # refused before any work


def test_every_head_study_writes_table1_rankings_and_one_index(gpt2_run):
    tmp_path, common, env = gpt2_run
    out = tmp_path / "every_head"
    args = ["every-head", *common, "--ctx", "32", "--train-windows", "20", "--steps", "6", "--batch-size", "64",
            "--expansion", "2", "--model-dtype", "float32", "--eval-windows", "2", "--sparsity-windows", "4",
            "--report-windows", "8", "--top", "3", "--out", str(out)]
    r = attnsae(*args, env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "table1.json").read_text())
    assert [row["layer"] for row in rows] == [0, 1]
    for row in rows:
        assert row["ce_sae_with_error"] == pytest.approx(row["ce_clean"], abs=1e-4)  # the decomposition is exact
        assert 0 <= row["n_dead"] <= row["d_sae"] and row["n_inputs"] == 4 * 31
    agreement = json.loads((out / "agreement.json").read_text())
    assert all(0 <= v <= 1 for a in agreement for v in a["per_head"]) and len(agreement[0]["per_head"]) == 4
    html = (out / "index.html").read_text()
    assert "Table 1" in html and 'href="heads/index.html"' in html and "heads/heads/L1H3.html" in html
    assert (out / "heads" / "heads" / "L1H3.html").exists() and (out / "polysemanticity.json").exists()
    stamp = (out / "L0" / "eval.json").stat().st_mtime_ns
    r = attnsae(*args, env=env)  # resumes: every stage reused
    assert r.returncode == 0, r.stderr
    assert (out / "L0" / "eval.json").stat().st_mtime_ns == stamp
