"""Infilling: the KV-cache path (context encoded once, spans appended) equals recomputing the
full hybrid forward at every step; the text API keeps the known text and reports lengths."""

from __future__ import annotations

import numpy as np
import pytest

import magnet
from magnet.generation import Sampling
from magnet.infill import LENGTH_CANDIDATES, fill_layout
from tests.hf_models import make_checkpoint


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
    pieces = [[tok.bos_id], tok.encode(left, add_bos=False), 4, tok.encode(right, add_bos=False)]
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
