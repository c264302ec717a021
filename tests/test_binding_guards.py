"""magnet._C entry points called directly, as a user or another library can: each misuse raises a
Python exception instead of crashing or corrupting memory (the public API never does these
things, so they are easy to miss)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import magnet
from magnet import _C
from magnet.adapt import LORA_TARGETS

QV = (1 << LORA_TARGETS["wq"]) | (1 << LORA_TARGETS["wv"])


@pytest.fixture
def stories(stories_dir):
    return magnet.Model.from_pretrained(stories_dir)


def _gpt2(max_positions: int = 4) -> _C.Model:
    """A one-layer GPT-2 of random weights, built straight from tensors."""
    rng = np.random.default_rng(0)
    V, D, F = 16, 8, 16

    def t(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors = {"tok_embeddings": t(V, D), "pos_embeddings": t(max_positions, D),
               "final_norm.weight": np.ones(D, np.float32),
               "final_norm.bias": np.zeros(D, np.float32)}
    layer = {"attn_norm.weight": (D,), "attn_norm.bias": (D,), "wq.weight": (D, D),
             "wk.weight": (D, D), "wv.weight": (D, D), "wq.bias": (D,), "wk.bias": (D,),
             "wv.bias": (D,), "wo.weight": (D, D), "wo.bias": (D,), "mlp_norm.weight": (D,),
             "mlp_norm.bias": (D,), "w_up.weight": (F, D), "w_up.bias": (F,),
             "w_down.weight": (D, F), "w_down.bias": (D,)}
    tensors.update({f"layers.0.{name}": t(*shape) for name, shape in layer.items()})
    config = dict(arch="gpt2", vocab_size=V, hidden_size=D, num_layers=1, num_heads=2,
                  num_kv_heads=2, head_dim=4, intermediate_size=F, max_positions=max_positions)
    return _C.Model(config, tensors), config, tensors


def _one(value: int, dtype=np.int32) -> np.ndarray:
    return np.array([[value]], dtype)


@pytest.mark.parametrize("position", [4, 2**31 - 1])
def test_a_position_past_the_table_is_refused_even_at_the_int_limit(position):
    """position + 1 wrapped to a negative length at 2**31 - 1, passed the limit check, and the
    embedding read far past GPT-2's position table (a segfault)."""
    model, _, _ = _gpt2()
    gen = _C.Generator(model, 1, 4)
    with pytest.raises(ValueError, match="position"):
        gen.append(_one(1), _one(1, np.uint8), _one(0), _one(position))


def test_a_model_is_initialised_once():
    """A second __init__ freed the C model that a generator still used (a segfault)."""
    model, config, tensors = _gpt2()
    gen = _C.Generator(model, 1, 4)
    with pytest.raises(RuntimeError, match="already initialised"):
        model.__init__(config, tensors)
    gen.append(_one(1), _one(1, np.uint8), _one(0), _one(0))
    assert np.isfinite(gen.logits()).all()


def test_a_trainer_needs_an_initialised_model_and_is_initialised_once(stories):
    with pytest.raises(RuntimeError, match="Model was not initialised"):
        _C.Trainer(_C.Model.__new__(_C.Model), {})  # was a segfault
    stories._c.attach_lora(4, 8.0, QV, 0)
    trainer = _C.Trainer(stories._c, {"mask_token_id": 3})
    with pytest.raises(RuntimeError, match="already initialised"):
        trainer.__init__(stories._c, {"mask_token_id": 3})


def test_a_training_batch_with_an_id_outside_the_vocabulary_is_refused(stories):
    """The masked view replaces tokens with the mask id and keeps the originals as labels,
    which the forward never checks: an id past the vocabulary trained silently (a zero loss
    and a gradient of raw logits)."""
    stories._c.attach_lora(4, 8.0, QV, 0)
    trainer = _C.Trainer(stories._c, dict(mask_rate=1.0, mask_token_frac=1.0,
                                          random_token_frac=0.0, mask_token_id=3, use_spans=0))
    for bad in (10**6, -1):
        tokens = np.array([[1, bad, 5, 6]], np.int32)
        with pytest.raises(ValueError, match=f"token id {bad} .*out of range for vocab_size"):
            trainer.micro_step(tokens, np.array([4], np.int32), None, None, None, None, None,
                               None, 1.0, 0.0, 0.0, 0, 1.0, 0, True)


def test_a_fork_after_op_attention_goes_through():
    """op_attention entered the fork gate twice and left it once: the next os.fork waited for
    ever."""
    code = textwrap.dedent("""
        import os
        import numpy as np
        from magnet import _C
        q = np.random.default_rng(0).random((1, 4, 1, 4), dtype=np.float32)
        _C.op_attention(q, q, q, np.ones((1, 4), np.uint8), np.zeros((1, 4), np.int32), q)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print("forked")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "forked", out.stderr


def test_the_attention_op_keeps_its_thread_count_while_another_thread_changes_it():
    """op_attention sized its scratch for the thread count before entering the gate that fixes
    the count for the call: a set_num_threads from another thread in between gave a scratch too
    small for the team (a heap overflow, seen with AddressSanitizer; tests/sanitize.sh runs this
    file, and only that build reports the overflow itself). Here: the results stay those of a
    quiet run."""
    import threading

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 33, 4, 16)).astype(np.float32) for _ in range(3))
    roles, seg = np.ones((2, 33), np.uint8), np.zeros((2, 33), np.int32)
    want = _C.op_attention(q, k, v, roles, seg, q)[0]
    before, stop = _C.get_num_threads(), threading.Event()

    def toggle():
        while not stop.is_set():
            for n in (1, 4, 2):
                _C.set_num_threads(n)

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        for _ in range(200):
            np.testing.assert_allclose(_C.op_attention(q, k, v, roles, seg, q)[0], want,
                                       rtol=1e-5, atol=1e-6)
    finally:
        stop.set()
        toggler.join()
        _C.set_num_threads(before)


def test_the_dropout_op_names_the_rate_it_refuses():
    """PyErr_Format has no %g: the message read "got %g"."""
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\), got 1\.5$"):
        _C.op_dropout(x, 1.5, 0, 0, x)


@pytest.mark.parametrize("filters", [dict(top_k=2), dict(min_p=0.1), dict(top_p=0.9), {}])
def test_sampling_from_nan_logits_is_an_error(filters):
    """A model that computes NaN left sampling with no candidate: it returned the id before the
    candidate list (about 2e9) and the next step read the embedding there (a segfault)."""
    _, config, tensors = _gpt2()
    tensors = dict(tensors, **{"final_norm.weight": np.full(8, np.nan, np.float32)})
    gen = _C.Generator(_C.Model(config, tensors), 1, 4, do_sample=True, **filters)
    gen.append(_one(1), _one(1, np.uint8), _one(0), _one(0))
    with pytest.raises(ValueError, match="logits are all NaN or -inf"):
        gen.decode_step()


def test_greedy_decoding_of_nan_logits_stays_in_the_vocabulary():
    _, config, tensors = _gpt2()
    tensors = dict(tensors, **{"final_norm.weight": np.full(8, np.nan, np.float32)})
    gen = _C.Generator(_C.Model(config, tensors), 1, 4)
    gen.append(_one(1), _one(1, np.uint8), _one(0), _one(0))
    tokens, _ = gen.decode_step()
    assert 0 <= int(tokens[0]) < config["vocab_size"]


def test_methods_through_the_type_refuse_an_object_that_was_never_initialised():
    """magnet._C.Model.num_parameters(obj) skips the instance's attribute lookup, which was the
    only guard: every method reached a NULL model (a segfault)."""
    for cls in (_C.Model, _C.Trainer):
        blank = cls.__new__(cls)
        names = [n for n, v in vars(cls).items() if callable(v) and not n.startswith("__")]
        assert len(names) >= 7
        for name in names:
            for args in ((), (None,), (None,) * 16):
                with pytest.raises((RuntimeError, TypeError)) as info:
                    getattr(cls, name)(blank, *args)
                if info.type is RuntimeError:
                    assert "was not initialised" in str(info.value)
                    break
            else:
                pytest.fail(f"{cls.__name__}.{name} took no argument list")
    with pytest.raises(RuntimeError, match="not initialised"):
        _C.Trainer.step.__get__(_C.Trainer.__new__(_C.Trainer))


def _unaligned(a: np.ndarray) -> np.ndarray:
    """a's values in a C-contiguous array at an odd address."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


def test_byte_swapped_and_unaligned_arrays_are_read_as_their_values():
    """The bindings checked the type number only: a '>f4' array has float32's, and its bytes were
    read as native floats ([[1]] @ [[3]] gave 1.4e-40); an odd address was misaligned loads."""
    a, w = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0]], np.float32)
    d = np.ones((1, 1), np.float32)
    want = _C.op_matmul(a, w, None, d)
    assert want[0][0, 0] == 11.0
    for x, y, g in ((a.astype(">f4"), w.astype(">f4"), d.astype(">f4")),
                    (_unaligned(a), _unaligned(w), _unaligned(d))):
        for got, ref in zip(_C.op_matmul(x, y, None, g), want, strict=True):
            np.testing.assert_array_equal(got, ref)
    _, config, tensors = _gpt2()
    for name, make in (("native byte order", lambda v: v.astype(">f4")), ("aligned", _unaligned)):
        bad = dict(tensors, **{"tok_embeddings": make(tensors["tok_embeddings"])})
        with pytest.raises(TypeError, match=f"tok_embeddings.*{name}"):
            _C.Model(config, bad)


def test_greedy_and_logprobs_leave_nan_logits_out():
    """A NaN at logit 0 won greedy decoding (no later logit compares greater than NaN) and made
    every log-probability NaN; NaN logits now weigh nothing, greedy or sampled."""
    _, config, tensors = _gpt2()
    base = _C.Generator(_C.Model(config, tensors), 1, 4)
    base.append(_one(1), _one(1, np.uint8), _one(0), _one(0))
    logits = base.logits()[0]
    # a NaN in the head's row 0 (GPT-2 ties it to the embedding): only logit 0 becomes NaN
    emb = tensors["tok_embeddings"].copy()
    emb[0, 0] = np.nan
    gen = _C.Generator(_C.Model(config, dict(tensors, tok_embeddings=emb)), 1, 4)
    gen.append(_one(1), _one(1, np.uint8), _one(0), _one(0))
    assert np.isnan(gen.logits()[0][0]) and np.isfinite(gen.logits()[0][1:]).all()
    tokens, logprobs = gen.decode_step()
    want = 1 + int(np.argmax(gen.logits()[0][1:]))
    assert int(tokens[0]) == want and np.isfinite(logprobs[0])
    rest = gen.logits()[0][1:].astype(np.float64)
    expect = rest[want - 1] - rest.max() - np.log(np.exp(rest - rest.max()).sum())
    assert abs(float(logprobs[0]) - expect) < 1e-5
    assert logits.shape == gen.logits()[0].shape


class _CollidingKey:
    """A dict key that hashes like a parameter name and runs code when compared."""

    def __init__(self, name: str, action) -> None:
        self.name, self.action, self.armed = name, action, False

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other) -> bool:
        if self.armed:
            self.action()
        return False


def test_user_code_cannot_run_under_the_models_lock(stories):
    """Dict lookups and int conversions ran the user's __eq__ and __index__ while the binding held
    the model's lock: code that detached the adapters there freed the block being written
    (a use-after-free), and a finalizer run by the collector inside state_dict() waited for ever
    for the lock its own thread held."""
    import gc

    stories._c.attach_lora(4, 8.0, QV, 0)
    sd = stories._c.lora_state_dict()
    key = _CollidingKey(next(iter(sd)), stories._c.detach_lora)
    evil = {key: 0, **sd}
    key.armed = True
    with pytest.raises(TypeError, match="keys of a LoRA state dict must be str"):
        stories._c.load_lora_state_dict(evil)
    trainer = _C.Trainer(stories._c, {"mask_token_id": 3})
    state = trainer.state()

    class Step:
        def __index__(self) -> int:
            stories._c.detach_lora()
            return 1

    with pytest.raises(ValueError, match="adapters"):  # detached before the lock: refused
        trainer.load_state(dict(state, step=Step()))
    stories._c.attach_lora(4, 8.0, QV, 0)
    # numpy's str subclass is a fine key
    stories._c.load_lora_state_dict({np.str_(k): v for k, v in sd.items()})

    merged = []

    class Finalizer:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

        def __del__(self) -> None:
            stories._c.merge_lora()
            merged.append(True)

    was = gc.isenabled()
    old = gc.get_threshold()
    gc.disable()
    try:
        Finalizer()
        keep = [{} for _ in range(200)]  # the next dicts are fresh allocations
        gc.set_threshold(1)
        gc.enable()
        stories._c.state_dict()  # hung for ever
        gc.collect()
        assert merged == [True] and len(keep) == 200
    finally:
        gc.set_threshold(*old)
        (gc.enable if was else gc.disable)()


def test_trainer_steps_stay_within_a_c_int(stories):
    """Steps were truncated to int: load_state(step=2**32 + 5) resumed at 5, lr(2**32 + 5) gave
    lr(5), lr(-5) a negative rate, and apply() at 2**31 - 1 overflowed."""
    stories._c.attach_lora(4, 8.0, QV, 0)
    trainer = _C.Trainer(stories._c, {"mask_token_id": 3, "warmup_steps": 10,
                                      "total_steps": 100})
    for bad in (-5, 2**31, 2**32 + 5):
        with pytest.raises(ValueError, match="step must lie in"):
            trainer.lr(bad)
    state = trainer.state()
    for bad in (2**31 - 1, 2**32 + 5, -1, 1.0, True, "3"):
        with pytest.raises(ValueError, match="no valid 'step'"):
            trainer.load_state(dict(state, step=bad))
    trainer.load_state(dict(state, step=np.int64(7)))
    assert trainer.step == 7
    trainer.load_state(dict(state, step=2**31 - 2))
    assert trainer.step == 2**31 - 2


def test_span_counts_are_bounded():
    """masked_view drew up to 8 places for every span asked for, placed or not: spans_max = 2**30
    spun for minutes on a 4-token row, with the GIL released (Ctrl-C could not stop it)."""
    cfg = dict(use_spans=1, spans_min=1, span_len_min=1, span_len_max=1, span_max_frac=1.0,
               all_span_frac=0.0, mask_token_id=3)
    with pytest.raises(ValueError, match="at most 1024 spans"):
        _C.masked_view(np.arange(4, dtype=np.int32), dict(cfg, spans_max=1025), 16, 0, 0)
    tokens, roles, _, _ = _C.masked_view(np.arange(64, dtype=np.int32),
                                         dict(cfg, spans_min=1024, spans_max=1024), 16, 0, 0)
    assert 0 < int(np.count_nonzero(roles)) <= 32
