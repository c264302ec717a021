"""The public API's surface: what type checkers see, reprs and equality of the result classes,
``magnet.__version__``, NumPy integers in adapt() and the names exported from ``magnet``."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pickle
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet.adapt import AdaptResult
from magnet.embedding import TokenEmbeddings
from magnet.infill import InfillResult

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["once upon a time there was a dog who liked to run in the park"] * 4
# the smallest adapt() run: validation, one step, no progress bar
TINY = dict(steps=1, batch_size=2, seq_len=16, progress=False)


@pytest.fixture(scope="module")
def model() -> magnet.Model:
    return magnet.Model.from_pretrained("stories260K")  # shipped with magnet


# -- 1. typing -----------------------------------------------------------------------------------

# Code written as the README and docs show it; each line marked "# E" must be flagged, every
# other line must type-check (they failed against the unions before the overloads).
USER_CODE = """\
    from collections.abc import Iterator

    import numpy as np

    import magnet

    m = magnet.Model.from_pretrained("stories260K")
    s: str = m.generate("Once upon a time").strip()
    first: str = m.generate(["a", "b"])[0].strip()
    pieces: Iterator[str] = m.generate("Once", stream=True)
    vecs = m.embed(["A dog ran.", "A puppy ran."], normalize=True)
    sims: np.ndarray = vecs @ vecs.T
    one: np.ndarray = m.embed("A dog ran.")
    tok = m.embed("A dog ran.", level="token")
    shape = tok.vectors.shape
    toks: list[magnet.TokenEmbeddings] = m.embed(["a", "b"], level="token")
    res: magnet.AdaptResult = m.adapt(["once upon a time"] * 8, steps=2, warmup_steps=1)
    fill: magnet.InfillResult = m.infill("Once upon a [BLANK].")
    version: str = magnet.__version__
    print(res.histroy)  # E
    m.adapt(["x"] * 8, steps=2, warmup_step=3)  # E
    m.adapt(["x"] * 8, steps=2, grad_accum="2")  # E
"""


def test_mypy_accepts_documented_calls_and_flags_mistakes(tmp_path):
    pytest.importorskip("mypy")
    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent(USER_CODE))
    # run from the checkout so that `magnet` resolves to this source tree
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
         f"--cache-dir={tmp_path / 'cache'}", str(user)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    flagged = {int(line.split(":")[1]) for line in errors}
    expected = {i for i, line in enumerate(user.read_text().splitlines(), 1)
                if line.endswith("# E")}
    assert flagged == expected, proc.stdout


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.get_overloads is 3.11+")
def test_generate_and_embed_have_overloads_and_adapt_a_result_type():
    assert len(typing.get_overloads(magnet.Model.generate)) == 4
    assert len(typing.get_overloads(magnet.Model.embed)) == 4
    # the definition after the overloads is what the runtime (and docs/build_api.py) sees
    assert "stream" in inspect.signature(magnet.Model.generate).parameters
    assert inspect.signature(magnet.Model.adapt).return_annotation == "AdaptResult"


def test_adapt_options_match_adapts_keyword_only_parameters():
    # AdaptOptions restates magnet.adapt.adapt's keyword-only options for type checkers
    from magnet.adapt import adapt
    from magnet.model import AdaptOptions

    keyword_only = {name for name, p in inspect.signature(adapt).parameters.items()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(AdaptOptions.__annotations__) == keyword_only


def test_overloads_keep_runtime_behaviour(model):
    assert isinstance(model.generate("Once", max_new_tokens=3), str)
    assert isinstance(model.generate(["Once", "A"], max_new_tokens=3), list)
    assert "".join(model.generate("Once", max_new_tokens=3, stream=True)) == model.generate(
        "Once", max_new_tokens=3)
    assert model.embed("A dog.").ndim == 1
    assert isinstance(model.embed("A dog.", "token"), TokenEmbeddings)
    assert isinstance(model.embed(["A dog."], level="token"), list)


# -- 2. TokenEmbeddings --------------------------------------------------------------------------


def test_token_embeddings_compare_by_value(model):
    a = model.embed("A dog ran.", level="token")
    b = model.embed("A dog ran.", level="token")
    assert a == b and not a != b  # raised ValueError (array truth value) before
    assert a in [b]
    assert pickle.loads(pickle.dumps(a)) == a
    assert a != model.embed("A cat ran.", level="token")
    assert a != "A dog ran."
    changed = TokenEmbeddings(a.vectors + 1, a.ids, a.tokens, a.offsets)
    assert a != changed
    # offsets read back as lists (JSON) still compare equal
    assert a == TokenEmbeddings(a.vectors.copy(), list(a.ids), list(a.tokens),
                                [list(o) for o in a.offsets])
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


def test_token_embeddings_repr_is_short():
    t = TokenEmbeddings(np.zeros((300, 64), np.float32), list(range(300)),
                        [f"t{i}" for i in range(300)], [(i, i + 1) for i in range(300)])
    r = repr(t)
    assert len(r) < 150 and "\n" not in r
    assert "300 tokens" in r and "float32[300, 64]" in r and "'t0'" in r and "..." in r


# -- 3. AdaptResult ------------------------------------------------------------------------------


def test_adapt_result_repr_is_a_summary():
    rec = {"step": 0, "loss": 7.666987230442064, "mntp": 4.487756150185525,
           "sscl": 0.7170405387878418, "msg": 2.4621905414686966, "lr": 4e-05,
           "grad_norm": 20.353329111553, "tokens_per_s": 10234.123456789}
    history = [dict(rec, step=i) for i in range(1000)]
    res = AdaptResult(history=history, eval_history=[{"loss": 1.0}] * 3, steps=1000,
                      wall_time_s=12.345, checkpoint="/tmp/ck")
    r = repr(res)
    assert len(r) < 300 and "\n" not in r  # was 200+ KB
    for part in ("steps=1000", "'step': 999", "'loss': 7.667", "wall_time_s=12.3",
                 "checkpoint='/tmp/ck'", "<1000 records>", "<3 records>"):
        assert part in r, r
    assert "last=None" in repr(AdaptResult())
    assert res == AdaptResult(history=list(history), eval_history=[{"loss": 1.0}] * 3,
                              steps=1000, wall_time_s=12.345, checkpoint="/tmp/ck")


# -- 4. __version__ ------------------------------------------------------------------------------


def test_version_is_the_distributions():
    assert magnet.__version__ == importlib.metadata.version("magnet-lm")


# -- 5. adapt()'s integer options ----------------------------------------------------------------

INT_OPTIONS = ("steps", "batch_size", "seq_len", "checkpoint_every", "grad_accum",
               "sscl_max_tokens", "eval_batches", "lora_rank", "warmup_steps")


def test_adapt_takes_numpy_integers(model):
    # np.int64 as embed() and generate() take it; refused with TypeError before
    res = model.adapt(TEXTS, steps=np.int64(1), batch_size=np.int32(2), seq_len=np.int64(16),
                      checkpoint_every=np.int64(5), grad_accum=np.uint8(1),
                      sscl_max_tokens=np.int64(8), eval_batches=np.int64(1),
                      lora_rank=np.int64(4), warmup_steps=np.int64(1), seed=np.uint64(3),
                      eval_data=TEXTS, progress=False)
    assert type(res.steps) is int and res.steps == 1
    assert len(res.history) == 1


@pytest.mark.parametrize("name", INT_OPTIONS)
@pytest.mark.parametrize("bad", [True, np.bool_(True), 2.0, "2"])
def test_adapt_refuses_non_integers_with_type_error(model, name, bad):
    # lora_rank=True and warmup_steps=True were a ValueError, unlike steps=True
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        model.adapt(TEXTS, **{**TINY, name: bad})


# -- 6. exports ----------------------------------------------------------------------------------


def test_result_classes_are_exported():
    assert magnet.AdaptResult is AdaptResult
    assert magnet.InfillResult is InfillResult
    assert magnet.TokenEmbeddings is TokenEmbeddings
    for name in ("AdaptResult", "InfillResult", "TokenEmbeddings"):
        assert name in magnet.__all__ and name in dir(magnet)
    with pytest.raises(AttributeError, match="no attribute 'Modle'"):
        magnet.Modle  # noqa: B018


def test_api_reference_documents_the_exported_classes():
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for name in ("AdaptResult", "InfillResult", "TokenEmbeddings"):
        assert f"## `magnet.{name}(" in api


def test_import_magnet_leaves_adapt_and_infill_unloaded():
    # AdaptResult and InfillResult are exported lazily, keeping `import magnet` light
    code = "import sys, magnet; print(sorted({'magnet.adapt', 'magnet.infill'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_type_hints_of_the_public_api_resolve():
    """typing.get_type_hints (which documentation, CLI and validation tools run) failed on
    Model.adapt, embed and infill, AdaptOptions and the eval tasks: their annotations named
    classes imported for type checkers only."""
    import magnet.eval
    from magnet.model import AdaptOptions

    targets = [AdaptOptions, AdaptResult, InfillResult, TokenEmbeddings, magnet.adapt.Stage]
    targets += [getattr(magnet.Model, n) for n in dir(magnet.Model)
                if not n.startswith("_") and callable(getattr(magnet.Model, n))]
    targets += [getattr(magnet.eval, n) for n in magnet.eval.__all__
                if inspect.isfunction(getattr(magnet.eval, n))]
    for obj in targets:
        typing.get_type_hints(obj)  # raises NameError on an unresolvable name
    hints = typing.get_type_hints(magnet.Model.adapt)
    assert hints["return"] is AdaptResult
    assert typing.get_type_hints(AdaptOptions)["stages"] == list[magnet.adapt.Stage] | None


def test_type_hints_of_the_task_modules_resolve():
    """The task modules (adapt, infill, generation, save) imported Model for type checkers only,
    so get_type_hints failed on their functions (magnet.adapt.adapt among them). They import it
    at run time now; each one imports on its own first, without a cycle."""
    modules = ["magnet.adapt", "magnet.infill", "magnet.generation", "magnet.save"]
    for name in modules:  # first import in a fresh interpreter: no circular-import error
        subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, check=True,
                       timeout=120)
    functions = 0
    for name in modules:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isfunction(obj) and obj.__module__ == name:
                typing.get_type_hints(obj)  # raises NameError on an unresolvable name
                functions += 1
    assert functions > 20
    assert typing.get_type_hints(magnet.adapt.adapt)["model"] is magnet.Model


def test_result_classes_keep_their_documented_home():
    """The classes live in magnet.results (cheap to import) and are named where the docs put them,
    so pickles made before and after the move load alike."""
    assert (AdaptResult.__module__, InfillResult.__module__) == ("magnet.adapt", "magnet.infill")
    assert magnet.AdaptResult is AdaptResult and magnet.InfillResult is InfillResult
    result = AdaptResult(history=[{"step": 1, "loss": 2.0}], steps=1)
    data = pickle.dumps(result)
    assert b"magnet.adapt" in data and b"magnet.results" not in data
    assert pickle.loads(data) == result
