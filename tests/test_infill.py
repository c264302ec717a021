"""Infilling: the KV-cache path (context encoded once, spans appended) equals recomputing the
full hybrid forward at every step; the text API keeps the known text and reports lengths."""

from __future__ import annotations

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

import magnet
from magnet.formats.gguf import gguf_tokenizer
from magnet.generation import Sampling
from magnet.infill import LENGTH_CANDIDATES, fill_layout
from magnet.tokenizer import Tokenizer
from tests.hf_models import make_checkpoint
from tests.tiny_text import word_tokenizer


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def tiny(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    make_checkpoint(request.param, d)
    return request.param, magnet.Model.from_pretrained(d)


@pytest.fixture(scope="module")
def stories(stories_dir):
    return magnet.Model.from_pretrained(stories_dir)


def recompute(m, pieces, filled, sampling=None):
    """Reference: at each span step, one full forward of the whole layout in text order (spans
    filled so far; not-yet-generated slots hold placeholder SPAN tokens, which nothing before
    them can see), then the next token from the state at p-1."""
    spans = [list(s) for s in filled]
    ids, roles, slots = [], [], []  # slots: (blank j, index s, position)
    for piece in pieces:
        if isinstance(piece, int):
            j = len({sl[0] for sl in slots})
            slots.extend((j, s, len(ids) + s) for s in range(piece))
            ids.extend([0] * piece)
            roles.extend([1] * piece)
        else:
            ids.extend(piece)
            roles.extend([0] * len(piece))
    ids = np.array(ids)
    logits_seen, chosen = [], []
    for j, s, p in slots:
        logits = m.logits(ids, roles=np.array(roles, np.uint8))[p - 1]
        tok = int(np.argmax(logits)) if sampling is None else spans[j][s]
        logits_seen.append(logits)
        chosen.append(tok)
        ids[p] = tok
    return chosen, np.stack(logits_seen)


LAYOUTS = [
    [[1, 5, 9, 13], 3, [20, 21, 22, 23, 24], 2, [30, 31]],  # two blanks inside the text
    [[1], 4, [40, 41, 42]],                                    # a blank at the start
    [[1, 7, 8], 2, 3, [50], 1],                                # adjacent blanks, one at the end
]


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
def test_cache_path_equals_full_recompute(tiny, layout):
    name, m = tiny
    pieces = LAYOUTS[layout]
    out = fill_layout(m, [pieces], record_logits=True)
    got = [t for span in out.span_ids[0] for t in span]
    ref_tokens, ref_logits = recompute(m, pieces, out.span_ids[0])
    assert got == ref_tokens, name
    assert np.abs(out.logits[0] - ref_logits).max() < 1e-4, name
    # sampled spans: the logits each token was drawn from match the recompute too
    s = Sampling(do_sample=True, temperature=1.3, top_k=20)
    out = fill_layout(m, [pieces], s, seed=11, record_logits=True)
    _, ref_logits = recompute(m, pieces, out.span_ids[0], sampling=s)
    assert np.abs(out.logits[0] - ref_logits).max() < 1e-4, name


def test_rows_of_different_lengths_equal_each_alone(tiny):
    _, m = tiny
    rows = [[[1, 5, 6], L, [9, 10, 11], L, [12]] for L in (1, 3, 2)]
    right = [[9, 12]] * 3
    batch = fill_layout(m, rows, right_tokens=right, record_logits=True)
    for b, row in enumerate(rows):
        alone = fill_layout(m, [row], right_tokens=[right[b]], record_logits=True)
        assert batch.span_ids[b] == alone.span_ids[0]
        assert np.abs(batch.logits[b] - alone.logits[0]).max() < 1e-4
        np.testing.assert_allclose(batch.right_logprob[b], alone.right_logprob[0], atol=1e-4)
        # the right-context score is the log-softmax at the last span token
        ref = recompute(m, row, alone.span_ids[0])
        assert [t for s in alone.span_ids[0] for t in s] == ref[0]


def test_rows_whose_longest_blanks_differ_fit_in_one_session(tiny):
    """The session held the longest row's total span length, but every row steps through each
    blank's longest version: rows (1, 3) and (3, 1) needed 6 slots, got 4 ("the session is
    full")."""
    _, m = tiny
    rows = [[[1, 5, 6], a, [9, 10, 11], b, [12]] for a, b in ((1, 3), (3, 1), (2, 2))]
    batch = fill_layout(m, rows, record_logits=True)
    for b, row in enumerate(rows):
        alone = fill_layout(m, [row], record_logits=True)
        assert batch.span_ids[b] == alone.span_ids[0]
        assert np.abs(batch.logits[b] - alone.logits[0]).max() < 1e-4


def test_text_api_keeps_context_and_reports_lengths(stories):
    left, mid, right = "Once upon a time, there was a little", ". She liked to", " every day."
    r = stories.infill(left + "[BLANK]" + mid + "[BLANK]" + right, span_tokens=[3, 5])
    assert r.span_tokens == [3, 5] and [len(s) for s in r.span_ids] == [3, 5]
    assert r.text == left + r.spans[0] + mid + r.spans[1] + right
    r2 = stories.infill([left, None, mid, None, right], span_tokens=[3, 5])
    assert r2.text == r.text and r2.spans == r.spans
    # chosen lengths follow the documented score
    auto = stories.infill([left, None, mid, None, right])
    for j, scores in enumerate(auto.length_scores):
        assert set(scores) == set(LENGTH_CANDIDATES)
        assert auto.span_tokens[j] == max(scores, key=lambda c: (scores[c], -c))
        assert len(auto.span_ids[j]) == auto.span_tokens[j]
    assert auto.text.startswith(left) and auto.text.endswith(right)
    # custom blank marker, a blank at the start, seeded sampling is reproducible
    kw = dict(blank="__", span_tokens=4, do_sample=True, seed=3, top_p=0.9)
    a = stories.infill("__ went to the park.", **kw)
    assert a.text.endswith(" went to the park.") and a == stories.infill("__ went to the park.",
                                                                         **kw)


def test_text_api_matches_token_layout(stories):
    tok = stories.tokenizer
    left, right = "The cat sat on the", " and slept."
    r = stories.infill(left + "[BLANK]" + right, span_tokens=4)
    pieces = [[tok.bos_id], tok.encode(left, add_bos=False), 4,
              tok.encode(right, add_bos=False, prefix_space=False)]
    out = fill_layout(stories, [pieces])
    assert out.span_ids[0] == r.span_ids
    ref_tokens, _ = recompute(stories, pieces, out.span_ids[0])
    assert r.span_ids[0] == ref_tokens


def test_bad_input(stories):
    with pytest.raises(ValueError, match="no blank"):
        stories.infill("no blank here")
    with pytest.raises(ValueError, match="no blank"):
        stories.infill(["just", "text"])
    with pytest.raises(TypeError):
        stories.infill(["text", 3, None])
    with pytest.raises(ValueError, match="span_tokens"):
        stories.infill("a [BLANK] b [BLANK]", span_tokens=[2])
    with pytest.raises(ValueError):
        stories.infill("a [BLANK] b", span_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        stories.infill("a [BLANK] b", top_p=2.0)
    with pytest.raises(ValueError):
        fill_layout(stories, [[3, [1, 2]]])  # a layout must start with context


# A tiny SentencePiece-style vocabulary (ids fit the tiny checkpoints): "▁" marks a space.
SP_PIECES = ["<unk>", "<s>", "</s>", "▁", ".", "a", "b", "▁a", "▁b", "ab", "▁ab"]
SP_MERGES = [("▁", "a"), ("▁", "b"), ("a", "b"), ("▁a", "b")]


def sp_tokenizer_json() -> str:
    """A Llama-2/Mistral tokenizer.json as transformers writes it: Prepend("▁") normalizer."""
    vocab = {p: i for i, p in enumerate(SP_PIECES)}
    backend = tokenizers.Tokenizer(models.BPE(vocab, SP_MERGES, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens(SP_PIECES[:3])
    return backend.to_str()


def sp_gguf_tokenizer() -> Tokenizer:
    """The same vocabulary as a GGUF SentencePiece ("llama") tokenizer: Metaspace, scores."""
    n = len(SP_PIECES)
    return gguf_tokenizer({
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": SP_PIECES,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0] + [-float(i) for i in range(n - 3, 0, -1)],
        "tokenizer.ggml.token_type": [2, 3, 3] + [1] * (n - 3),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0})


def check_continuing_pieces(m, left, right, right_tokens):
    """infill tokenizes the piece after the blank as ``right_tokens`` (no prefix space): the
    chosen lengths' scores are those of that layout, and the text is the caller's."""
    tok = m.tokenizer
    right_ids = tok.encode(right, False, prefix_space=False)
    assert tok.token_strings([tok.backend.id_to_token(i) for i in right_ids]) == right_tokens
    left_ids = tok.encode(left, add_bos=False)
    assert tok.decode(left_ids + right_ids) == left + right  # the context the model sees
    cands = [1, 2, 3]
    r = m.infill(left + "[BLANK]" + right, length_candidates=cands)
    assert r.text == left + r.spans[0] + right
    rows = [[[tok.bos_id], left_ids, c, right_ids] for c in cands]
    ref = fill_layout(m, rows, right_tokens=[[right_ids[0]]] * len(cands))
    for i, c in enumerate(cands):
        want = float(np.mean(ref.logprobs[i][0])) + ref.right_logprob[i][0]
        assert r.length_scores[0][c] == pytest.approx(want, abs=1e-4), c
    fixed = m.infill([left, None, right], span_tokens=2)
    assert fixed.span_ids[0] == ref.span_ids[1][0]


def test_piece_after_a_blank_has_no_prefix_space_llama2c(stories):
    check_continuing_pieces(stories, "Lily went to the park", ". She saw a big dog.",
                            [".", "▁She", "▁saw", "▁a", "▁big", "▁do", "g", "."])
    # a blank at the start: the first known piece follows it, so it gets no "▁" either
    r = stories.infill("[BLANK] went home.", span_tokens=2)
    right = stories.tokenizer.encode(" went home.", False, prefix_space=False)
    assert stories.tokenizer.token_strings([stories.tokenizer.backend.id_to_token(right[0])]) \
        == ["▁w"]  # not "▁"
    ref = fill_layout(stories, [[[1], 2, right]])
    assert r.span_ids == ref.span_ids[0] and r.text == r.spans[0] + " went home."


def test_leading_empty_pieces_change_nothing(stories):
    """Empty pieces vanish: a leading "" made the first known piece tokenize as if it followed
    a blank (no "▁"), and so gave another span."""
    want = stories.infill("Lily liked[BLANK] the park.", span_tokens=4)
    for pieces in (["", "Lily liked", None, " the park."], ["", "", "Lily liked", None,
                                                               " the park.", ""]):
        got = stories.infill(pieces, span_tokens=4)
        assert got.span_ids == want.span_ids and got.text == want.text


@pytest.mark.parametrize("kind", ["tokenizer.json", "gguf"])
def test_piece_after_a_blank_has_no_prefix_space(kind, tmp_path):
    make_checkpoint("llama", tmp_path)
    if kind == "tokenizer.json":
        (tmp_path / "tokenizer.json").write_text(sp_tokenizer_json())
        m = magnet.Model.from_pretrained(tmp_path)
    else:
        m = magnet.Model.from_pretrained(tmp_path)
        m.tokenizer = sp_gguf_tokenizer()
    assert m.tokenizer.encode(". ab b", False) == [3, 4, 10, 8]  # "▁" "." "▁ab" "▁b"
    check_continuing_pieces(m, "ab a", ". ab b", [".", "▁ab", "▁b"])
    check_continuing_pieces(m, "b", " a.", ["▁a", "."])


def test_byte_level_pieces_are_unchanged():
    """GPT-2's byte-level BPE adds no prefix space: the pieces tokenize as before."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["Ġa"] = len(vocab)
    backend = tokenizers.Tokenizer(models.BPE(vocab, [("Ġ", "a")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = Tokenizer(backend, None, None)
    for text in (". a b", " a", "a"):
        assert tok.encode(text, False, prefix_space=False) == tok.encode(text, False)
    assert tok._continuing_backend() is backend
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # RoBERTa's habit
    tok = Tokenizer(backend, None, None)
    assert tok.encode("a", False) == [vocab["Ġa"]]
    assert tok.encode("a", False, prefix_space=False) == [vocab["a"]]


@pytest.mark.parametrize("name", ["gpt2", "mistral"])
def test_length_candidates_fit_the_positions(name, tmp_path):
    """GPT-2 (64 learned positions) and Mistral (sliding window 64): candidates whose layout
    does not fit are left out; ValueError only when none fits."""
    make_checkpoint(name, tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    m.tokenizer = word_tokenizer(bos_id=1, eos_id=2)
    text = " ".join(["w5"] * 48) + "[BLANK]"  # BOS + 48 tokens + the blank: 49 + L positions
    assert m.infill(text, span_tokens=2).span_tokens == [2]
    r = m.infill(text)
    assert set(r.length_scores[0]) == {1, 2, 4, 8} and r.span_tokens[0] in (1, 2, 4, 8)
    assert m.infill(text, span_tokens=15).span_tokens == [15]
    with pytest.raises(ValueError, match="positions"):
        m.infill(text, span_tokens=16)
    with pytest.raises(ValueError, match="positions"):
        m.infill(text, length_candidates=[16, 32])
    with pytest.raises(ValueError, match="positions"):
        m.infill(" ".join(["w5"] * 63) + "[BLANK]")
    two = " ".join(["w5"] * 40) + "[BLANK] w6 [BLANK]"  # 42 + 2 L positions
    assert set(m.infill(two).length_scores[1]) == {1, 2, 4, 8}
    assert m.infill(two, span_tokens=[16, None]).length_scores[1].keys() == {1, 2, 4}


def test_bad_lengths_flags_and_text(stories):
    with pytest.raises(ValueError, match="positions"):
        stories.infill("a [BLANK] b", span_tokens=2**31)
    with pytest.raises(ValueError, match="positions"):
        stories.infill("a [BLANK] b [BLANK]", span_tokens=[1, 2**40])
    with pytest.raises(ValueError, match="positions"):
        fill_layout(stories, [[[1], 2**31]])
    for cands in ([1.7], [2, True], [0], []):
        with pytest.raises(ValueError, match="length_candidates"):
            stories.infill("a [BLANK] b", length_candidates=cands)
    with pytest.raises(TypeError, match="do_sample"):
        stories.infill("a [BLANK] b", do_sample="no")
    with pytest.raises(ValueError, match="surrogate"):
        stories.infill("a \ud800 [BLANK] b")
    # the index is the whole text's (it was the index within the piece after the blank)
    with pytest.raises(ValueError, match=r"text contains a lone surrogate '\\udc00' at index 12"):
        stories.infill("a [BLANK] b \udc00")
    with pytest.raises(ValueError, match="segment 2 contains a lone surrogate"):
        stories.infill(["a", None, "\udc00"])
    kw = dict(span_tokens=3, do_sample=True, seed=5)
    r = stories.infill("a [BLANK] b", temperature=np.float32(0.5), top_p=np.float64(0.9),
                       min_p=np.float32(0.0), repetition_penalty=np.float32(1.25), **kw)
    assert r == stories.infill("a [BLANK] b", temperature=0.5, top_p=0.9, min_p=0.0,
                               repetition_penalty=1.25, **kw)
    assert stories.infill("a [BLANK] b", top_k=3_000_000_000, **kw) == \
        stories.infill("a [BLANK] b", **kw)
