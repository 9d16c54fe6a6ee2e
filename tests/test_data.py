import json

import numpy as np
import pytest
import torch

from attnsae.data import ActivationStore, StoreError, WindowSpec, collect, harvest, iter_documents, make_windows, split_windows
from attnsae.data import store as store_mod
from attnsae.data.corpus import default_documents
from attnsae.models import gpt2_tokenizer


class CharTok:
    """A tokenizer stand-in: one id per character."""

    def __call__(self, text, add_special_tokens=False):
        class Out:
            input_ids = [3 + (ord(c) % 90) for c in text]

        return Out()


def test_windows_have_bos_and_split_is_disjoint_and_deterministic():
    docs = ["a" * 100, "b" * 250, "c" * 77]
    w = make_windows(docs, CharTok(), WindowSpec(ctx=16), bos_id=1)
    assert w.shape[1] == 16 and (w[:, 0] == 1).all()
    assert len(w) == (100 + 250 + 77 + 3) // 15
    # the stream is the documents joined by BOS, cut into 15-token bodies
    stream = w[:, 1:].reshape(-1)
    assert (stream[:100] == 3 + ord("a") % 90).all() and stream[100] == 1
    tr, ho = split_windows(w, 0.25, seed=3)
    tr2, ho2 = split_windows(w, 0.25, seed=3)
    assert len(tr) + len(ho) == len(w) and len(ho) > 0
    assert np.array_equal(ho, ho2) and np.array_equal(tr, tr2)
    rows = {r.tobytes() for r in w}
    assert {r.tobytes() for r in tr} | {r.tobytes() for r in ho} == rows


def test_max_tokens_stops_tokenizing_a_long_document_near_the_limit(monkeypatch):
    """A 50 MB file is one document; with max_tokens only pieces up to the limit reach the tokenizer."""
    from attnsae.data import windows as windows_mod

    monkeypatch.setattr(windows_mod, "PIECE_CHARS", 1000)
    seen = []

    class Counting(CharTok):
        def __call__(self, text, add_special_tokens=False):
            seen.append(len(text))
            return super().__call__(text)

    doc = ("word " * 200_000).strip()  # 1 MB of text
    w = make_windows([doc, "tail"], Counting(), WindowSpec(ctx=16, max_tokens=3000), bos_id=1)
    assert len(w) == 3000 // 16 and max(seen) <= 1000 and sum(seen) < 4000
    stream = w[:, 1:].reshape(-1)
    assert np.array_equal(stream, np.asarray(CharTok()(doc[:len(stream)]).input_ids))  # the pieces join seamlessly
    whole = make_windows([doc[:5000]], Counting(), WindowSpec(ctx=16), bos_id=1)  # no limit: one call, whole
    assert seen[-1] == 5000 and len(whole) == 5001 // 15


def test_corpus_sources(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    assert sorted(iter_documents(str(tmp_path))) == ["hello", "one", "two"]
    assert list(iter_documents(str(tmp_path / "b.jsonl"))) == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        list(iter_documents(str(tmp_path / "bad.jsonl")))
    with pytest.raises(FileNotFoundError):
        list(iter_documents("./no/such/place"))
    for typo in ("data/corpus.txt", "tests/missing_corpus", "corpora/a/b"):  # never sent to the hub
        with pytest.raises(FileNotFoundError, match="neither"):
            list(iter_documents(str(typo)))


def test_an_owner_name_corpus_goes_to_the_hub(monkeypatch):
    from attnsae.data import corpus

    asked = []
    monkeypatch.setattr(corpus, "_hf_dataset", lambda name, field: asked.append(name) or iter(["x"]))
    assert list(iter_documents("Skylion007/openwebtext")) == ["x"] and asked == ["Skylion007/openwebtext"]


def test_default_corpus_is_real_english():
    docs = list(default_documents())
    assert len(docs) > 300  # 232 addresses + 135 chapters and more
    text = " ".join(docs)
    assert "Fellow-Citizens of the Senate" in text and "Call me Ishmael" in text
    n_tokens = len(gpt2_tokenizer()(text[:2_000_000]).input_ids)
    assert n_tokens > 350_000


def _hooks():
    return ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.1.attn.hook_q[2]"]


def test_harvest_matches_direct_forward_and_many_hooks_come_from_one_pass(tiny, windows, tmp_path):
    model = tiny[0]
    model.check_hook_name("blocks.0.attn.hook_z")  # builds the hook-name table (one probe forward)
    calls = {"n": 0}
    orig = model.forward_run

    def counting(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    model.forward_run = counting
    store = harvest(model, windows, tmp_path / "s", _hooks(), dtype="float32", batch_size=8, windows_per_shard=24, progress=False)
    assert calls["n"] == 3  # 24 windows / batch 8: one forward per batch for all three hooks
    model.forward_run = orig
    assert len(store) == 24 * 15  # BOS position skipped
    assert store.d("blocks.1.attn.hook_q[2]") == model.cfg.d_head
    direct = collect(model, torch.from_numpy(windows.astype(np.int64)), _hooks(), first_pos=1)
    for h in _hooks():
        torch.testing.assert_close(store.all_rows(h), direct[h])
    assert np.array_equal(store.windows(), windows)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["complete"] and m["meta"]["first_pos"] == 1 and m["meta"]["processing"]["weights"] == "random"
    assert all(len(f["sha256"]) == 64 for s in m["shards"] for f in s["files"].values())


def test_store_rows_map_to_windows_and_positions(tiny, windows, tmp_path):
    model = tiny[0]
    store = harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"], dtype="float32", windows_per_shard=7,
                    progress=False)
    assert (store.first_pos, store.per_window, store.n_windows) == (1, 15, 24)
    rows = np.arange(len(store))
    w, p = store.positions(rows)
    assert (w.min(), w.max(), p.min(), p.max()) == (0, 23, 1, 15)
    assert np.array_equal(store.row(w, p), rows)
    direct = collect(model, torch.from_numpy(windows[[17, 5]].astype(np.int64)), ["blocks.0.attn.hook_z"], first_pos=1)
    torch.testing.assert_close(store.window_rows([17, 5]), direct["blocks.0.attn.hook_z"].view(2, 15, -1))


def test_store_dtypes_roundtrip(tiny, windows, tmp_path):
    model = tiny[0]
    hook = "blocks.0.attn.hook_z"
    direct = collect(model, torch.from_numpy(windows.astype(np.int64)), [hook], first_pos=1)[hook]
    for dtype, tol in (("bfloat16", 1e-2), ("float16", 1e-3)):
        s = harvest(model, windows, tmp_path / dtype, ["blocks.0.attn.hook_z"], dtype=dtype, progress=False)
        got = s.all_rows()
        assert got.dtype == {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        torch.testing.assert_close(got.float(), direct, atol=tol, rtol=tol)


def test_killed_harvest_resumes_without_duplicates_or_gaps(tiny, windows, tmp_path, monkeypatch):
    model = tiny[0]
    full = harvest(model, windows, tmp_path / "ref", _hooks(), dtype="float32", windows_per_shard=5, progress=False)
    real_add = store_mod.StoreWriter.add_shard
    count = {"n": 0}

    def dying_add(self, rng, acts):
        if count["n"] == 2:
            raise KeyboardInterrupt("killed")  # dies while shard 3 is in flight
        count["n"] += 1
        return real_add(self, rng, acts)

    monkeypatch.setattr(store_mod.StoreWriter, "add_shard", dying_add)
    with pytest.raises(KeyboardInterrupt):
        harvest(model, windows, tmp_path / "s", _hooks(), dtype="float32", windows_per_shard=5, progress=False)
    monkeypatch.setattr(store_mod.StoreWriter, "add_shard", real_add)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert len(m["shards"]) == 2 and not m["complete"]
    partial = ActivationStore(tmp_path / "s")
    assert partial.n_windows == 10 and len(partial.windows()) == 24  # only the windows whose rows are all stored
    resumed = harvest(model, windows, tmp_path / "s", _hooks(), dtype="float32", windows_per_shard=5, progress=False)
    assert len(resumed) == len(full)
    for h in _hooks():
        assert torch.equal(resumed.all_rows(h), full.all_rows(h))
    ranges = [tuple(s["windows"]) for s in resumed.shards]
    assert ranges == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24)]


def test_harvest_refuses_to_mix_different_harvests(tiny, windows, tmp_path):
    model = tiny[0]
    harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"], progress=False)
    with pytest.raises(StoreError, match="different harvest"):
        harvest(model, windows, tmp_path / "s", ["blocks.1.attn.hook_z"], progress=False)


def test_corrupt_and_truncated_shards_are_detected(tiny, windows, tmp_path):
    model = tiny[0]
    harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"], windows_per_shard=10, progress=False)
    shard = tmp_path / "s" / "blocks.0.attn.hook_z" / "shard_00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard_00001.bin is corrupt"):
        ActivationStore(tmp_path / "s")
    shard.write_bytes(bytes(data[:-64]))
    with pytest.raises(StoreError, match="truncated"):
        ActivationStore(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        ActivationStore(tmp_path / "s")
    with pytest.raises(StoreError, match="not an activation store"):
        ActivationStore(tmp_path)


def test_nan_activations_are_not_stored(tiny, windows, tmp_path):
    model = tiny[0]
    with torch.no_grad():
        model.blocks[0].W_V[0, 0] = float("nan")
    with pytest.raises(StoreError, match="NaN"):
        harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"], progress=False)


def test_bad_hook_spec_fails_before_any_work(tiny, windows, tmp_path):
    with pytest.raises(KeyError, match="not a hook"):
        harvest(tiny[0], windows, tmp_path / "s", ["blocks.0.attn.hook_zed"], progress=False)
    with pytest.raises(ValueError, match="no head dimension"):
        harvest(tiny[0], windows, tmp_path / "s2", ["blocks.0.hook_resid_pre[1]"], progress=False)
    assert not (tmp_path / "s").exists()


def test_shuffled_batches_cover_each_epoch_once_and_resume_in_order(tiny, windows, tmp_path):
    store = harvest(tiny[0], windows, tmp_path / "s", ["blocks.0.attn.hook_z"], dtype="float32", windows_per_shard=7,
                    progress=False)
    n, bs = len(store), 36
    per_epoch = n // bs
    it = store.batches(bs, seed=5)
    epoch = torch.cat([next(it) for _ in range(per_epoch)])
    everything = store.all_rows()
    # each batch is the next slice of a permutation of all rows: every row at most once per epoch
    perm = store.permutation(5, 0)
    assert sorted(perm.tolist()) == list(range(n))
    torch.testing.assert_close(epoch, everything[torch.from_numpy(perm[: per_epoch * bs])])
    assert not torch.equal(epoch[:bs], everything[:bs])
    seq = [next(it) for _ in range(3)]
    again = store.batches(bs, seed=5, start=per_epoch)
    for a in seq:
        assert torch.equal(a, next(again))


def test_streamed_batches_are_a_pure_function_of_the_step(tiny, windows):
    from attnsae.data import StreamedActivations

    model = tiny[0]
    stream = StreamedActivations(model, windows, "blocks.1.attn.hook_z", chunk_windows=8)
    it = stream.batches(20, seed=3)
    first = [next(it) for _ in range(9)]  # crosses chunk (6 batches of 20 in 8*15 rows) and epoch boundaries
    resumed = stream.batches(20, seed=3, start=4)
    for a in first[4:]:
        assert torch.equal(a, next(resumed))
    # the rows are real activations of the windows
    direct = collect(model, torch.from_numpy(windows.astype(np.int64)), ["blocks.1.attn.hook_z"], 1)["blocks.1.attn.hook_z"]
    row = first[0][0]
    assert (direct - row).abs().amax(dim=1).min() < 1e-5


def test_removed_manifest_entries_are_refilled_or_refused_never_shifted(tiny, windows, tmp_path):
    """The repair the errors advise (remove a bad shard's entry and every later one, re-run the harvest) gives back
    every row; removing an entry in the middle, or the first, is refused instead of shifting rows onto other windows."""
    model = tiny[0]
    hook = ["blocks.0.attn.hook_z"]
    full = harvest(model, windows, tmp_path / "s", hook, dtype="float32", windows_per_shard=5, progress=False)
    want = full.all_rows()
    path = tmp_path / "s" / "manifest.json"
    m = json.loads(path.read_text())
    for drop, refused in ((slice(0, 1), True), (slice(2, 3), True), (slice(3, None), False)):
        cut = dict(m, shards=[s for i, s in enumerate(m["shards"]) if i not in range(len(m["shards"]))[drop]])
        path.write_text(json.dumps(cut))
        if refused:
            with pytest.raises(StoreError, match="removed or reordered"):
                ActivationStore(tmp_path / "s")
            with pytest.raises(StoreError, match="removed or reordered"):
                harvest(model, windows, tmp_path / "s", hook, dtype="float32", windows_per_shard=5, progress=False)
        else:
            with pytest.raises(StoreError, match="complete but its shards end at window 15"):
                ActivationStore(tmp_path / "s")
            again = harvest(model, windows, tmp_path / "s", hook, dtype="float32", windows_per_shard=5, progress=False)
            assert len(again) == len(want) and torch.equal(again.all_rows(), want)
    bad = json.loads(path.read_text())
    bad["shards"][0]["files"][hook[0]]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(bad))
    with pytest.raises(StoreError, match="outside the store"):
        ActivationStore(tmp_path / "s")


def test_a_stale_windows_file_is_rewritten_from_the_harvest(tiny, windows, tmp_path):
    model = tiny[0]
    harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"], progress=False)
    np.save(tmp_path / "s" / "windows.npy", windows[::-1].copy())
    with pytest.raises(StoreError, match="not the windows this store was harvested from"):
        ActivationStore(tmp_path / "s").windows()
    harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"], progress=False)
    assert np.array_equal(np.load(tmp_path / "s" / "windows.npy"), windows)


def test_a_store_refuses_another_models_activations(tiny, windows, tmp_path, capsys):
    import copy

    from attnsae.models.loading import fold_value_biases_

    model = tiny[0]
    store = harvest(model, windows, tmp_path / "s", ["blocks.0.attn.hook_z"], progress=False)
    store.check_model(model)
    other = copy.deepcopy(model)
    other.cfg.name = "another-model"
    with pytest.raises(StoreError, match="harvested from 'tiny-.*', not 'another-model'"):
        store.check_model(other)
    if model.cfg.biases:  # GPT-2: folding the value biases changes hook_z
        with pytest.raises(StoreError, match="differently processed.*fold_value_biases"):
            store.check_model(fold_value_biases_(copy.deepcopy(model)))
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["complete"] = False
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    ActivationStore(tmp_path / "s").check_model(model)
    assert "harvest is unfinished" in capsys.readouterr().err
