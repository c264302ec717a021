"""Generation over the KV cache: greedy parity with full-sequence logits, transformers and the
llama2.c golden decode; sampling filters, seeds, stop strings, streaming, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import magnet
from magnet import _C
from magnet.generation import Sampling, generate_ids
from tests.hf_models import VOCAB, make_checkpoint
from tests.tiny_text import word_tokenizer, words


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def tiny(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ref = make_checkpoint(request.param, d)
    return request.param, ref, magnet.Model.from_pretrained(d)


@pytest.fixture(scope="module")
def stories(stories_dir):
    return magnet.Model.from_pretrained(stories_dir)


def greedy_reference(m, prompt, n, eos=-1):
    """Greedy loop over full-sequence logits: no cache anywhere."""
    ids = list(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(m.logits(np.array(ids))[-1]))
        out.append(t)
        if t == eos:
            break
        ids.append(t)
    return out


def test_greedy_equals_full_logits_loop_batched(tiny):
    name, _, m = tiny
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, VOCAB, n).tolist() for n in (5, 1, 9)]
    out = generate_ids(m, prompts, max_new_tokens=12, eos_id=-1)
    for p, o in zip(prompts, out, strict=True):
        assert o == greedy_reference(m, p, 12), name
        assert generate_ids(m, [p], max_new_tokens=12, eos_id=-1)[0] == o


def test_greedy_equals_transformers_generate(tiny):
    name, ref, m = tiny
    import torch

    prompt = np.random.default_rng(1).integers(3, VOCAB, 6)
    for penalty in (1.0, 1.5):
        with torch.no_grad():
            hf = ref.generate(torch.as_tensor(prompt[None]), max_new_tokens=15, do_sample=False,
                              repetition_penalty=penalty, pad_token_id=0,
                              attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        theirs = hf[0, len(prompt):].tolist()
        ours = generate_ids(m, [prompt.tolist()], 15, Sampling(repetition_penalty=penalty))[0]
        assert ours == theirs[:len(ours)], (name, penalty)
        assert len(ours) == len(theirs) or ours[-1] == m.config.eos_token_id


def test_stories_golden_greedy(stories, stories_dir):
    text = (stories_dir / "greedy_golden.txt").read_text()
    golden = [int(x) for x in text.split("ids: [")[1].split("]")[0].split(",")]
    assert generate_ids(stories, [[1]], 64)[0] == golden
    assert stories.generate("", max_new_tokens=64) == stories.tokenizer.decode(golden)


def test_text_batch_equals_single(stories):
    prompts = ["Once upon a time", "Tom had a big red", "The sun"]
    batch = stories.generate(prompts, max_new_tokens=20)
    assert batch == [stories.generate(p, max_new_tokens=20) for p in prompts]
    assert stories.generate("The sun", max_new_tokens=0) == ""


def test_tiny_text_api_and_eos(tiny, tmp_path):
    _, _, m = tiny
    m.tokenizer = word_tokenizer(eos_id=m.config.eos_token_id)
    prompt = "w10 w11 w12"
    ids = generate_ids(m, [m.tokenizer.encode(prompt)], 20)[0]
    text = m.generate(prompt, max_new_tokens=20)
    eos = m.config.eos_token_id
    assert text == (" " + words(t for t in ids if t != eos) if ids and ids != [eos] else "")


def test_stop_strings_and_stream(stories):
    full = stories.generate("Once upon a time", max_new_tokens=40)
    stop = "Lily"
    assert stop in full
    cut = stories.generate("Once upon a time", max_new_tokens=40, stop=[stop, "zzz"])
    assert cut == full[:full.index(stop)]
    pieces = list(stories.generate("Once upon a time", max_new_tokens=40, stream=True))
    assert "".join(pieces) == full and len(pieces) > 5
    pieces = list(stories.generate("Once upon a time", 40, stream=True, stop=stop))
    assert "".join(pieces) == cut
    sampled = dict(do_sample=True, temperature=0.9, top_p=0.95, seed=5)
    assert "".join(stories.generate("Tom", 30, stream=True, **sampled)) == \
        stories.generate("Tom", 30, **sampled)


def test_stream_holds_back_a_run_of_byte_tokens(stories):
    """Decoding turns a run of <0xXX> tokens into text as one group: a complete emoji's bytes
    followed by two bytes of the next become six U+FFFD, not the emoji and two. The stream had
    sent the emoji already, so its pieces did not add up to the non-streaming text."""
    from magnet.generation import _Row, _stream

    tok = stories.tokenizer
    run = [tok.backend.token_to_id(f"<0x{b:02X}>") for b in (0xF0, 0x9F, 0x98, 0x80, 0xF0, 0x9F)]
    assert len(tok.byte_ids) == 256 and set(run) <= tok.byte_ids
    prompt = tok.encode("Smile:")

    class Session:  # what decode_steps yields with each token: the C generator
        def finish(self, b):
            pass

    row = _Row(tok, prompt, [])
    pieces = list(_stream(row, ((Session(), np.array([t], np.int32)) for t in run), (2,)))
    whole = _Row(tok, prompt, [])
    for t in run:
        whole.add(t, (2,))
    assert "".join(pieces) == whole.text == "\ufffd" * 6
    # a word after the run ends it: the run's text is final then
    row = _Row(tok, prompt, [])
    for t in run[:4] + [tok.backend.token_to_id("\ufdd0the")]:
        row.add(t, (2,))
    assert row.safe_length() == len(row.text) and row.text.startswith("\U0001f600")
    # end to end: hot sampling draws byte tokens often
    for seed in range(12):
        kw = dict(do_sample=True, temperature=50.0, seed=seed, max_new_tokens=8)
        assert "".join(stories.generate("Hi", stream=True, **kw)) == stories.generate("Hi", **kw)


def test_a_stop_string_counts_only_in_final_text_of_a_byte_run(stories):
    """<0xC3><0xA9> read "é" for a moment, but a third byte made the run invalid: the final
    text is three U+FFFD and has no "é", so stop="é" must not cut it (it cut to "")."""
    from magnet.generation import _Row, _stream

    tok = stories.tokenizer
    byte = {b: tok.backend.token_to_id(f"<0x{b:02X}>") for b in (0xC3, 0xA9)}
    prompt = tok.encode("Say:")

    class Session:
        def finish(self, b):
            pass

    def run(ids, stops):
        row = _Row(tok, prompt, stops)
        for t in ids:
            if not row.stopped:
                row.add(t, (2,))
        row.finish()
        streamed = "".join(_stream(_Row(tok, prompt, stops),
                                   ((Session(), np.array([t], np.int32)) for t in ids), (2,)))
        assert streamed == row.text
        return row.text, row.stopped

    bad = [byte[0xC3], byte[0xA9], byte[0xA9]]
    assert run(bad, []) == ("\ufffd" * 3, False)
    assert run(bad, ["é"]) == ("\ufffd" * 3, False)
    # a real "é" still stops: once a word ends the run, or when the row ends inside it
    the = tok.backend.token_to_id("\ufdd0the")
    assert run([the, byte[0xC3], byte[0xA9], the, the], ["é"]) == (" the", True)
    assert run([the, byte[0xC3], byte[0xA9]], ["é"]) == (" the", True)


def test_seeded_sampling(stories):
    kw = dict(max_new_tokens=30, do_sample=True, temperature=1.0, top_k=40, top_p=0.95,
              min_p=0.01, repetition_penalty=1.1)
    a = stories.generate(["Once", "Lily"], seed=7, **kw)
    assert a == stories.generate(["Once", "Lily"], seed=7, **kw)
    outs = {stories.generate("Once", seed=s, **kw) for s in range(6)}
    assert len(outs) > 1


def test_filters_that_leave_one_token_are_greedy(stories):
    greedy = stories.generate("Once upon a time", max_new_tokens=25)
    for kw in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0), dict(temperature=1e-4)):
        got = stories.generate("Once upon a time", max_new_tokens=25, do_sample=True, seed=3,
                               **kw)
        assert got == greedy, kw


def _first_token_samples(m, prompt, n, **kw):
    return [generate_ids(m, [prompt], 1, Sampling(do_sample=True, **kw), seed=s)[0][0]
            for s in range(n)]


def test_sampled_tokens_respect_top_k_top_p_min_p(stories):
    prompt = [1, 403, 407, 261]
    logits = stories.logits(np.array(prompt))[-1].astype(np.float64)
    order = np.argsort(-logits, kind="stable")
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top5 = set(order[:5].tolist())
    assert set(_first_token_samples(stories, prompt, 60, top_k=5)) <= top5
    csum = np.cumsum(p[order])
    nucleus = set(order[:int(np.searchsorted(csum, 0.6)) + 1].tolist())
    assert set(_first_token_samples(stories, prompt, 60, top_p=0.6)) <= nucleus
    minp = set(np.flatnonzero(p >= 0.2 * p.max()).tolist())
    assert set(_first_token_samples(stories, prompt, 60, min_p=0.2)) <= minp
    # plain sampling follows the distribution: the most likely token is the most frequent
    draws = _first_token_samples(stories, prompt, 300, temperature=1.0)
    freq = np.bincount(draws, minlength=len(p)) / len(draws)
    assert np.abs(freq - p).max() < 0.1


def test_bad_input(stories):
    g = stories.generate
    with pytest.raises(ValueError, match="empty"):
        g([])
    with pytest.raises(TypeError):
        g(["ok", 3])
    with pytest.raises(TypeError):
        g(17)
    with pytest.raises(ValueError, match="max_new_tokens"):
        g("a", max_new_tokens=-1)
    for top_p in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p"):
            g("a", top_p=top_p)
    with pytest.raises(ValueError, match="temperature"):
        g("a", do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        g("a", top_k=-1)
    with pytest.raises(ValueError, match="repetition_penalty"):
        g("a", repetition_penalty=0.0)
    with pytest.raises(ValueError, match="stream"):
        g(["a", "b"], stream=True)
    with pytest.raises(ValueError, match="stop"):
        g("a", stop=[""])
    with pytest.raises(ValueError):
        generate_ids(stories, [[]], 3)
    with pytest.raises(ValueError):
        generate_ids(stories, [[10**6]], 3)


def test_stop_string_names_a_special_token(tiny):
    """A stop string may be a special token's text (transformers' stop_strings): it is matched on
    the text with special tokens, while the returned text leaves them out as before."""
    _, _, m = tiny
    eos = m.config.eos_token_id
    m.tokenizer = word_tokenizer(eos_id=eos)
    prompt = "w10 w11 w12"
    kw = dict(max_new_tokens=20, do_sample=True, temperature=2.0, seed=1)
    ids = generate_ids(m, [m.tokenizer.encode(prompt)], 20, Sampling(True, 2.0), seed=1)[0]
    k = next(k for k in range(2, len(ids) - 2) if ids[k] not in ids[:k] + [1, eos])
    special = f"w{ids[k]}"
    m.tokenizer.backend.add_special_tokens([special])  # now decoding skips it
    full = m.generate(prompt, **kw)
    assert full == " " + words(t for t in ids if t not in (ids[k], eos, 1))  # 1: BOS
    cut = m.generate(prompt, stop=special, **kw)
    assert cut == " " + words(t for t in ids[:k] if t != 1)
    assert m.generate(prompt, stop=["zzz", special + "w"], **kw) == full
    for stop in (special, [special, "zzz"], f"w{ids[k - 1]}"):
        pieces = list(m.generate(prompt, stop=stop, stream=True, **kw))
        assert "".join(pieces) == m.generate(prompt, stop=stop, **kw), stop
    assert m.generate([prompt, "w20"], stop=special, **kw)[0] == cut


def test_numpy_scalars_are_numbers(stories):
    kw = dict(max_new_tokens=12, do_sample=True, seed=4)
    plain = dict(temperature=float(np.float32(0.7)), top_p=float(np.float32(0.9)),
                 min_p=0.01, repetition_penalty=float(np.float32(1.1)))
    ref = stories.generate("Once", **kw, **plain)
    got = stories.generate("Once", **kw, temperature=np.float32(0.7), top_p=np.float32(0.9),
                           min_p=np.float64(0.01), repetition_penalty=np.float32(1.1))
    assert got == ref
    assert stories.generate("Once", **kw, temperature=np.int64(1)) == \
        stories.generate("Once", **kw, temperature=1)
    assert stories.generate("Once", 8, do_sample=np.bool_(False)) == stories.generate("Once", 8)
    with pytest.raises(TypeError, match="temperature"):
        stories.generate("Once", temperature=np.bool_(True))


def test_tiny_temperature_is_greedy(stories):
    """(x - max) / t is computed in double: no overflow for any t > 0, the limit is greedy; the
    Python check and the C check agree on what is > 0."""
    greedy = stories.generate("Once upon a time", max_new_tokens=10)
    for t in (1e-30, 1e-38, 1e-44, 1e-46, 1e-300, 5e-324):
        got = stories.generate("Once upon a time", max_new_tokens=10, do_sample=True, seed=0,
                               temperature=t)
        assert got == greedy, t
        _C.Generator(stories._c, 1, 4, do_sample=True, temperature=t)
    for t in (0.0, -1e-300):
        with pytest.raises(ValueError, match="temperature"):
            stories.generate("Once", do_sample=True, temperature=t)
        with pytest.raises(ValueError, match="temperature"):
            _C.Generator(stories._c, 1, 4, do_sample=True, temperature=t)


def test_top_k_beyond_the_vocabulary_filters_nothing(stories):
    kw = dict(max_new_tokens=15, do_sample=True, seed=2)
    assert stories.generate("Once", top_k=3_000_000_000, **kw) == stories.generate("Once", **kw)
    assert stories.generate("Once", top_k=np.int64(2**40), **kw) == stories.generate("Once", **kw)


def test_kv_cache_grows_with_the_generation(tiny):
    """The session allocates its first tokens and grows on demand: a huge max_new_tokens costs
    nothing when EOS comes early, and decoding across a growth stays exact."""
    name, _, m = tiny
    prompt = [1, 5, 9]
    limit = 64 - len(prompt) if name == "gpt2" else 4300  # GPT-2 has 64 learned positions
    free = generate_ids(m, [prompt], limit, eos_id=-1)[0]
    ref = m.logits(np.array(prompt + free[:-1]))[len(prompt) - 1:].argmax(-1)
    assert free == ref.tolist()
    stop = free[2]
    assert generate_ids(m, [prompt], 10**8, eos_id=stop)[0] == free[:free.index(stop) + 1]
    gen = _C.Generator(m._c, 1, 10**8)
    assert gen.capacity < 10**5
    if name == "gpt2":  # its position table ends the session long before: no such cache
        assert generate_ids(m, [prompt], 2**31, eos_id=-1)[0] == free
    else:
        with pytest.raises(MemoryError, match="KV cache"):
            generate_ids(m, [prompt], 2**31)
    # a session that keeps hidden states grows them too
    if name != "gpt2":
        n = 5000
        ids = np.random.default_rng(3).integers(0, VOCAB, n).astype(np.int32)
        gen = _C.Generator(m._c, 1, n, keep_hidden=True)
        for a in range(0, n, 1000):
            c = ids[None, a:a + 1000]
            gen.append(c, np.ones_like(c, np.uint8), np.zeros_like(c), np.arange(a, a + 1000,
                                                                              dtype=np.int32)[None])
        assert gen.capacity == n and gen.length == n
        full = m.logits(ids)
        for i in (10, 4000, 4999):
            gen.logits_at(np.array([i], np.int32))
            assert np.abs(gen.logits()[0] - full[i]).max() < 1e-4


def test_bad_flags_and_text(stories):
    with pytest.raises(TypeError, match="do_sample"):
        stories.generate("Once", do_sample="no")
    with pytest.raises(TypeError, match="do_sample"):
        stories.generate("Once", do_sample=1)
    for prompt in ("Once \ud800 upon", ["fine", "\udfff"]):
        with pytest.raises(ValueError, match="surrogate"):
            stories.generate(prompt)


@pytest.mark.parametrize("where", ["config", "generation_config"])
def test_every_eos_id_ends_generation(tmp_path, where):
    """A list of EOS ids (Llama 3 Instruct's three) ends a row at any of them, as in
    transformers; from config.json or generation_config.json, and kept by save_pretrained."""
    import json

    import torch

    ref = make_checkpoint("llama", tmp_path / "src")
    prompt = [1, 5, 9]
    free = generate_ids(magnet.Model.from_pretrained(tmp_path / "src"), [prompt], 16,
                        eos_id=-1)[0]
    i = next(i for i in range(2, 16) if free[i] not in free[:i] and 2 not in free[:i + 1])
    stop = free[i]
    cfg_path = tmp_path / "src" / "config.json"
    if where == "config":  # transformers' generation_config.json would take precedence
        (tmp_path / "src" / "generation_config.json").unlink(missing_ok=True)
        cfg = json.loads(cfg_path.read_text())
        cfg["eos_token_id"] = [2, stop]
        cfg_path.write_text(json.dumps(cfg))
    else:
        (tmp_path / "src" / "generation_config.json").write_text(
            json.dumps({"eos_token_id": [2, stop]}))
    m = magnet.Model.from_pretrained(tmp_path / "src")
    assert (m.config.eos_token_id, m.config.eos_token_ids) == (2, (2, stop))
    assert generate_ids(m, [prompt], 16)[0] == free[:i + 1]
    with torch.no_grad():
        hf = ref.generate(torch.as_tensor([prompt]), max_new_tokens=16, do_sample=False,
                          eos_token_id=[2, stop], pad_token_id=0,
                          attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert hf[0, 3:].tolist() == free[:i + 1]
    again = magnet.Model.from_pretrained(m.save_pretrained(tmp_path / "saved"))
    assert (again.config.eos_token_id, again.config.eos_token_ids) == (2, (2, stop))


def test_bad_eos_ids_are_rejected(stories):
    for bad, match in (([1, -3], "non-negative"), ([1, 10**6], "out of range"),
                       ("x", "int or a sequence")):
        with pytest.raises((ValueError, TypeError), match=match):
            generate_ids(stories, [[1, 2]], 4, eos_id=bad)


def test_any_number_of_eos_ids(stories):
    """A generation config may list many EOS ids; more than 16 used to be refused."""
    prompt = [1, 403, 407]
    free = generate_ids(stories, [prompt], 16, eos_id=-1)[0]
    stop = free[6]
    unused = [t for t in range(3, stories.config.vocab_size) if t not in free][:300]
    assert generate_ids(stories, [prompt], 16, eos_id=[*unused, stop])[0] == \
        free[:free.index(stop) + 1]
    assert generate_ids(stories, [prompt], 16, eos_id=unused)[0] == free


def test_generation_stops_at_the_position_limit(tmp_path):
    """GPT-2 has a learned position table: a generation that reached its end failed with "a
    sequence of N tokens exceeds the model's positions" after all the decoding (a stream after
    printing part of it). It now stops there, as transformers' max_length does; a prompt that
    does not fit is refused before any work."""
    make_checkpoint("gpt2", tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    limit = m.config.max_positions
    prompt = [1, 5, 9]
    out = generate_ids(m, [prompt], 1000, eos_id=-1)[0]
    assert len(prompt) + len(out) == limit
    assert out == generate_ids(m, [prompt], limit - len(prompt), eos_id=-1)[0]
    m.tokenizer = word_tokenizer(eos_id=m.config.eos_token_id)
    text = m.generate("w5 w6 w7", max_new_tokens=1000)
    assert "".join(m.generate("w5 w6 w7", max_new_tokens=1000, stream=True)) == text
    with pytest.raises(ValueError, match=f"more than the model's {limit} positions"):
        m.generate(" ".join(["w5"] * (limit + 1)), stream=True)  # at the call, not the first piece


@pytest.mark.parametrize("arch", ["gpt2", "mistral"])
def test_each_row_of_a_batch_stops_at_its_own_position_limit(tmp_path, arch):
    """Rows are left-padded, so each reaches the limit (GPT-2's table, Mistral's window) at its
    own length: a short prompt beside a long one got as few new tokens as the long one (9 of
    20). A prompt that fills the positions gets none; a max_new_tokens past any session
    (2**31 - 1) is cut at the limit instead of failing with MemoryError."""
    make_checkpoint(arch, tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    limit = m.config.max_positions if arch == "gpt2" else m.config.sliding_window
    short, long, full = [1, 5, 9, 2, 7], list(range(3, 58)), [4] * limit
    alone = generate_ids(m, [short], 20, eos_id=-1)[0]
    assert len(alone) == 20
    batch = generate_ids(m, [short, long, full], 20, eos_id=-1)
    assert batch[0] == alone
    assert batch[1] == generate_ids(m, [long], 20, eos_id=-1)[0]
    assert len(batch[1]) == limit - len(long) and batch[2] == []
    assert len(generate_ids(m, [short], 2**31 - 1, eos_id=-1)[0]) == limit - len(short)


def _row_decodes_like_the_whole(tok, prompt: list[int], draws, trials: int = 12,
                                length: int = 100) -> None:
    from magnet import generation

    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(trials):
        row = generation._Row(tok, prompt, [])
        for _ in range(length):
            row.add(draws(rng), (-1,))
            assert row.text == generation.continuation_text(tok, prompt, row.ids), row.ids
        moved += row.fixed
    assert moved > 0  # the kept text was used


@pytest.mark.parametrize("window", [1, 3, 8])
def test_row_text_equals_decoding_everything(stories, monkeypatch, window):
    """A row re-decodes only its last tokens (the text before them is kept, so a long
    generation is not quadratic): after every token its text equals decoding all of them,
    with byte-fallback runs, valid and invalid UTF-8, and words mixed at random."""
    from magnet import generation

    monkeypatch.setattr(generation, "_TEXT_WINDOW", window)
    tok = stories.tokenizer
    byte = sorted(tok.byte_ids)
    v = stories.config.vocab_size
    prompt = tok.encode("Once upon a time")
    _row_decodes_like_the_whole(
        tok, prompt, lambda rng: int(rng.choice(byte)) if rng.random() < 0.4
        else int(rng.integers(3, v)))


def test_row_text_equals_decoding_everything_byte_level_bpe(smollm2_gguf, monkeypatch):
    """The same on SmolLM2's GPT-2-style tokenizer (bytes inside tokens, no fallback ids) with
    its special tokens."""
    from magnet import generation
    from magnet.formats.gguf import load_gguf

    monkeypatch.setattr(generation, "_TEXT_WINDOW", 3)
    tok = load_gguf(smollm2_gguf).tokenizer
    v = tok.vocab_size
    prompt = tok.encode("Héllo wörld, 你好")
    _row_decodes_like_the_whole(tok, prompt, lambda rng: int(rng.integers(0, v)), trials=6)
