"""The user-facing Model: loading, and the forward passes of the unified attention rule."""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import numpy as np

from magnet import _C
from magnet.config import ModelConfig
from magnet.embedding import DEFAULT, TokenEmbeddings
from magnet.formats import Loaded
from magnet.results import AdaptResult, InfillResult, Stage
from magnet.tokenizer import Tokenizer

# Imported for real, not only for type checkers: typing.get_type_hints(Model.adapt) and the tools
# built on it (documentation, CLI and validation libraries) evaluate the annotations.
if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:
    from typing_extensions import Unpack

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")
# Models shipped inside the package, loadable by name without any download.
EMBEDDED_MODELS = {"stories260K": Path(__file__).resolve().parent / "models" / "stories260K"}


def _resolve(path: str | os.PathLike, tokenizer: str | os.PathLike | None
             ) -> tuple[Loaded, Path | None]:
    """Pick the format from what is at ``path``; also the directory an adapter may sit in."""
    if isinstance(path, str) and path in EMBEDDED_MODELS and not Path(path).exists():
        path = EMBEDDED_MODELS[path]
    if os.fspath(path) == "":
        raise ValueError("path is empty: pass a model directory, a file or a hub id")
    p = Path(path)
    if not p.exists() and isinstance(path, str) and _HUB_ID.fullmatch(path) and (
            not path.startswith(".")):
        p = _from_hub(path)
    kind, where = _locate(p, path)
    if tokenizer is not None and kind != "llama2c":
        raise ValueError("tokenizer= names the tokenizer file of a llama2.c checkpoint; GGUF "
                         "files and Hugging Face directories carry their own tokenizer")
    if kind == "gguf":
        from magnet.formats.gguf import load_gguf

        return load_gguf(where), None
    if kind == "hf":
        from magnet.formats.huggingface import load_huggingface

        return load_huggingface(where), where
    from magnet.formats.llama2c import load_llama2c

    return load_llama2c(where, tokenizer=tokenizer), None


def _locate(p: Path, given: str | os.PathLike) -> tuple[str, Path]:
    """The format at ``p`` ("gguf", "hf" or "llama2c") and what its loader reads."""
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".gguf", ".bin"):
            return ("gguf" if suffix == ".gguf" else "llama2c"), p
        raise ValueError(
            f"{p}: unrecognised model file (expected a .gguf file, a llama2.c .bin checkpoint, "
            f"or a Hugging Face model directory)"
        )
    if p.is_dir():
        if (p / "config.json").is_file():
            return "hf", p
        ggufs = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() == ".gguf")
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        if len(ggufs) > 1:
            raise ValueError(f"{p} holds {len(ggufs)} .gguf files "
                             f"({', '.join(g.name for g in ggufs)}); pass the file itself")
        if list(p.glob("*.bin")):
            return "llama2c", p
        raise FileNotFoundError(
            f"{p}: no config.json, single .gguf file or llama2.c checkpoint in this directory"
        )
    raise FileNotFoundError(f"no model at {os.fspath(given)!r}: not a file or directory")


def _from_hub(repo_id: str) -> Path:
    """Download a Hugging Face repository snapshot (needs the optional huggingface_hub): every
    file a local directory would be read for."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path; downloading it needs huggingface_hub "
            f"(pip install 'magnet-lm[hub]')"
        ) from None
    try:
        local = snapshot_download(
            repo_id, allow_patterns=["config.json", "generation_config.json", "*.safetensors",
                                     "*.safetensors.index.json", "tokenizer.json",
                                     "tokenizer_config.json", "chat_template.jinja",
                                     "adapter_config.json"]
        )
    except Exception as e:  # huggingface_hub raises its own types for offline, 404, network
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and downloading it from the Hugging Face hub "
            f"failed ({type(e).__name__}: {e})"
        ) from None
    return Path(local)


def _as_int_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular integer array ({e})") from None
    if arr.size == 0 and arr.dtype == np.float64 and not isinstance(x, np.ndarray):
        arr = arr.astype(np.int64)  # [] and [[]] are empty input, not float input
    if arr.dtype.kind in "fO" and arr.size and (arr.dtype == object
                                                or not isinstance(x, np.ndarray)):
        # Python ints beyond int64 make an object (or a lossy float64) array: kept as exact
        # ints (object), so that the caller's range check names the value
        exact = arr if arr.dtype == object else np.asarray(x, dtype=object)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, np.timedelta64)
               for v in exact.flat):
            return exact
    if arr.dtype.kind not in "iub":  # timedelta64/datetime64 are np.integer subtypes: refused
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


_MODEL_IDENTITIES = itertools.count()


class AdaptOptions(TypedDict, total=False):
    """The keyword-only options of :meth:`Model.adapt` (``magnet.adapt.adapt``'s), so that a
    type checker flags a misspelt or mistyped option passed through ``**options``.
    tests/test_api_surface.py checks that the keys match ``adapt``'s keyword-only parameters."""

    lora_targets: Iterable[str] | None
    lora_dropout: float
    resid_dropout: float
    warmup_steps: int | None
    weight_decay: float
    clip_norm: float
    grad_accum: int
    sscl_max_tokens: int
    instruction: str
    temperature: float
    stages: list[Stage] | None
    eval_batches: int


class Model:
    """A decoder (LLaMA family or GPT-2) whose attention follows MAGNET's unified rule.

    Build with :meth:`from_pretrained`. ``roles`` mark each token CONTEXT (0) or SPAN (1);
    ``segments`` give each token's sequence id within its row (-1 = padding). All-SPAN (the
    default) is the ordinary causal LM; all-CONTEXT is a bidirectional encoder.
    """

    def __init__(self, config: ModelConfig, tensors: dict[str, np.ndarray],
                 tokenizer: Tokenizer | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self._c = _C.Model(config.to_c(), tensors)
        # held by adapt() and to(): the one trains the C model in place, the other replaces it
        # with a copy, so either one beside the other (or a second adapt) would lose work
        self._exclusive = threading.Lock()
        # which model and which of its weights, for caches of its outputs (eval's features):
        # unique for the process (an id() is reused after the model is freed), and counting
        # the adapt() calls that may have changed the weights
        self._identity = next(_MODEL_IDENTITIES)
        self._adaptations = 0

    @contextmanager
    def _exclusively(self, what: str) -> Iterator[None]:
        if not self._exclusive.acquire(blocking=False):
            raise ValueError(f"{what}: adapt() or to() is running on this model in another "
                             "thread; call it after that returns")
        try:
            yield
        finally:
            self._exclusive.release()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                        device: str = "cpu", precision: str | None = None) -> Model:
        """Load a model.

        ``path``: ``"stories260K"`` (the small model shipped with magnet), a Hugging Face
        model directory (config.json + safetensors, optional
        tokenizer.json), a ``.gguf`` file, a llama2.c checkpoint ``.bin`` (or a directory holding
        one, with ``tokenizer=`` naming its tokenizer file when ambiguous), or a Hugging Face hub
        id (downloaded with the optional ``huggingface_hub``).

        ``device``: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"`` (see :meth:`to`);
        ``precision``: ``"bf16"`` (the GPU default) or ``"fp32"`` for the GPU's matrix products.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        loaded, directory = _resolve(path, tokenizer)
        model = cls(loaded.config, loaded.tensors, loaded.tokenizer)
        if directory is not None and (directory / "adapter_config.json").is_file():
            from magnet.save import load_adapter

            load_adapter(model, directory)
        if device != "cpu" or precision not in (None, "fp32"):
            model.to(device, precision=precision)
        return model

    def to(self, device: str, precision: str | None = None) -> Model:
        """Move the parameters (and any adapters) to ``device`` and return this model.

        ``"cuda"`` / ``"cuda:N"`` runs every method (logits, adapt, generate, infill, embed) on
        that GPU with the same API; ``"cpu"`` brings the model back. ``precision`` applies to a
        GPU's matrix products: ``"bf16"`` (default: bfloat16 inputs, float32 accumulation and
        master weights) or ``"fp32"``. Raises ValueError naming the reason when the device is
        not available (no CUDA in this build, no driver, no GPU), or while :meth:`adapt` runs
        on this model in another thread.
        """
        from magnet.device import parse_device, parse_precision, point_to_cublas

        kind, index = parse_device(device)
        code = parse_precision(kind, precision)
        if kind == "cuda":
            point_to_cublas()
        with self._exclusively("to()"):
            self._c = self._c.to_device(kind, index, code)
        return self

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda:N"``: where the parameters live and the ops run."""
        kind, name, _ = self._c.device()
        return "cpu" if kind == "cpu" else name.split(" ")[0]

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: the precision of the matrix products."""
        return "bf16" if self._c.device()[2] == 1 else "fp32"

    @property
    def num_parameters(self) -> int:
        return self._c.num_parameters()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, under magnet's names (float32)."""
        return self._c.state_dict()

    def _prepare(self, input_ids: Any, roles: Any, segments: Any
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        ids = _as_int_array(input_ids, "input_ids")
        if ids.ndim not in (1, 2):
            raise ValueError(f"input_ids must be [T] or [B, T], got shape {ids.shape}")
        single = ids.ndim == 1
        ids2 = ids[None, :] if single else ids
        if ids2.shape[0] == 0 or ids2.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {ids.shape})")
        lo, hi = int(ids2.min()), int(ids2.max())
        if lo < -(2**31) or hi >= 2**31:  # beyond int32; the C core checks against the vocab
            raise ValueError(f"token id {lo if lo < -(2**31) else hi} is out of range for "
                             f"vocab_size {self.config.vocab_size}")

        def layout(x: Any, name: str, default: int, dtype: type) -> np.ndarray:
            if x is None:
                return np.full(ids2.shape, default, dtype=dtype)
            arr = _as_int_array(x, name)
            if arr.shape != ids.shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {ids.shape} "
                                 f"like input_ids")
            arr = arr[None, :] if single else arr
            lo, hi = (0, 1) if name == "roles" else (-1, 2**31 - 1)
            if arr.min() < lo or arr.max() > hi:
                raise ValueError(f"{name} values must lie in [{lo}, {hi}]"
                                 + (" (CONTEXT=0, SPAN=1)" if name == "roles" else
                                    " (-1 marks padding)"))
            return np.ascontiguousarray(arr, dtype=dtype)

        r = layout(roles, "roles", 1, np.uint8)
        s = layout(segments, "segments", 0, np.int32)
        return np.ascontiguousarray(ids2, dtype=np.int32), r, s, single

    def logits(self, input_ids: Any, roles: Any = None, segments: Any = None) -> np.ndarray:
        """Next-token logits under the unified rule.

        input_ids: int [T] or [B, T]; roles: uint8-compatible, same shape (default all SPAN:
        causal); segments: int32-compatible, same shape (default 0; -1 = padding).
        Returns float32 [B, T, V] ([T, V] for 1-D input); padding rows are zero.
        """
        ids, r, s, single = self._prepare(input_ids, roles, segments)
        _, out = self._c.forward(ids, r, s, False, True)
        return out[0] if single else out

    def hidden_states(self, input_ids: Any, roles: Any = None, segments: Any = None
                      ) -> np.ndarray:
        """Final-layer states after the final norm: float32 [B, T, D] ([T, D] for 1-D input).

        Arguments as :meth:`logits`; padding rows are zero.
        """
        ids, r, s, single = self._prepare(input_ids, roles, segments)
        out, _ = self._c.forward(ids, r, s, True, False)
        return out[0] if single else out

    # Overloads for type checkers only (the runtime and inspect.signature see the definition
    # after them): a str prompt gives a str, a list a list[str], stream=True an iterator, so that
    # ``m.generate("x").strip()`` type-checks. A str is also a Sequence[str]; the str overload
    # comes first, so a str prompt picks it (hence the overlap ignores).
    @overload
    def generate(  # type: ignore[overload-overlap]
            self, prompt: str, max_new_tokens: int = ..., do_sample: bool = ...,
            temperature: float = ..., top_k: int = ..., top_p: float = ..., min_p: float = ...,
            repetition_penalty: float = ..., stop: str | Sequence[str] | None = ...,
            seed: int | None = ..., stream: Literal[False] = ...) -> str: ...

    @overload
    def generate(self, prompt: Sequence[str], max_new_tokens: int = ...,
                 do_sample: bool = ..., temperature: float = ..., top_k: int = ...,
                 top_p: float = ..., min_p: float = ..., repetition_penalty: float = ...,
                 stop: str | Sequence[str] | None = ..., seed: int | None = ...,
                 stream: Literal[False] = ...) -> list[str]: ...

    @overload
    def generate(self, prompt: str, max_new_tokens: int = ..., do_sample: bool = ...,
                 temperature: float = ..., top_k: int = ..., top_p: float = ...,
                 min_p: float = ..., repetition_penalty: float = ...,
                 stop: str | Sequence[str] | None = ..., seed: int | None = ..., *,
                 stream: Literal[True]) -> Iterator[str]: ...

    @overload  # stream given as a plain bool: any of the three
    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = ...,
                 do_sample: bool = ..., temperature: float = ..., top_k: int = ...,
                 top_p: float = ..., min_p: float = ..., repetition_penalty: float = ...,
                 stop: str | Sequence[str] | None = ..., seed: int | None = ...,
                 stream: bool = ...) -> str | list[str] | Iterator[str]: ...

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop: str | Sequence[str] | None = None, seed: int | None = None,
                 stream: bool = False) -> str | list[str] | Iterator[str]:
        """Continue text left to right (all-SPAN, the causal decoder) with a KV cache.

        ``prompt``: a str, or a list of str (a batch; left-padded so rows end together).
        Returns the new text only (str, or list[str] for a list), without the EOS token and cut
        before the first ``stop`` string (checked on the decoded text); a row ends at EOS, at a
        stop string or after ``max_new_tokens`` tokens, and each row at the model's position
        limit (GPT-2's ``n_positions``, a sliding window: prompt and new tokens together; a
        prompt longer than it is a ValueError). Greedy
        unless ``do_sample``; sampling applies ``repetition_penalty`` (Hugging Face semantics:
        prompt and generated tokens), ``temperature``, ``top_k`` (0 = off), ``top_p`` in
        (0, 1], ``min_p`` in [0, 1], in that order. The same ``seed`` gives the same output
        (None: a random seed). ``stream=True`` (one prompt only) returns an iterator of text
        pieces whose concatenation is the result.
        See :mod:`magnet.generation`.
        """
        from magnet.generation import generate

        return generate(self, prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                        min_p, repetition_penalty, stop, seed, stream)

    def infill(self, text: str | Sequence[str | None], blank: str = "[BLANK]",
               span_tokens: int | Sequence[int | None] | None = None, **sampling: Any
               ) -> InfillResult:
        """Fill the blanks of ``text`` using the text on both sides (CONTEXT once, spans SPAN).

        ``text``: a str with ``blank`` markers, or a list of segments where None is a blank
        (``["left", None, "right"]``). ``span_tokens``: the length of every blank (int), one per
        blank (list, None entries chosen), or None: chosen per blank by the rule of
        :mod:`magnet.infill` (best of :data:`magnet.infill.LENGTH_CANDIDATES` by mean span
        log-prob + log-prob of the next known token). ``sampling``: ``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``seed``,
        ``length_candidates``. Returns an :class:`~magnet.infill.InfillResult` (``.text``,
        ``.spans``, ``.span_tokens``). A text without a blank raises ValueError.
        """
        from magnet.infill import infill

        return infill(self, text, blank, span_tokens, **sampling)

    # Overloads for type checkers only, as for generate: sentence level gives an array; token
    # level a TokenEmbeddings for a str, a list of them for a list.
    @overload
    def embed(self, texts: str | Sequence[str], level: Literal["sentence"] = ...,
              pooling: str = ..., instruction: str | None = ..., batch_size: int = ...,
              normalize: bool = ..., max_length: int | None = ..., truncate: bool = ...,
              show_progress_bar: bool | None = ...) -> np.ndarray: ...

    @overload
    def embed(  # type: ignore[overload-overlap]
            self, texts: str, level: Literal["token"], pooling: str = ...,
            instruction: str | None = ..., batch_size: int = ..., normalize: bool = ...,
            max_length: int | None = ..., truncate: bool = ...,
            show_progress_bar: bool | None = ...) -> TokenEmbeddings: ...

    @overload
    def embed(self, texts: Sequence[str], level: Literal["token"], pooling: str = ...,
              instruction: str | None = ..., batch_size: int = ..., normalize: bool = ...,
              max_length: int | None = ..., truncate: bool = ...,
              show_progress_bar: bool | None = ...) -> list[TokenEmbeddings]: ...

    @overload  # level given as a plain str: any of the three
    def embed(self, texts: str | Sequence[str], level: str = ..., pooling: str = ...,
              instruction: str | None = ..., batch_size: int = ..., normalize: bool = ...,
              max_length: int | None = ..., truncate: bool = ...,
              show_progress_bar: bool | None = ...
              ) -> np.ndarray | TokenEmbeddings | list[TokenEmbeddings]: ...

    def embed(self, texts: str | Sequence[str], level: str = "sentence", pooling: str = "last",
              instruction: str | None = DEFAULT, batch_size: int = 32,
              normalize: bool = False, max_length: int | None = None, truncate: bool = True,
              show_progress_bar: bool | None = None
              ) -> np.ndarray | TokenEmbeddings | list[TokenEmbeddings]:
        """Bidirectional (all-CONTEXT) embeddings; the input layout and pooling are documented
        in :mod:`magnet.embedding`.

        ``level="sentence"``: float32 [N, D] (a single str gives [D]); ``pooling`` "last" (the
        appended EOS's final state) or "mean" (text tokens + EOS; BOS and instruction excluded);
        ``instruction`` defaults to ``"Given the sentence, find its representation: "``.
        ``level="token"``: per text a :class:`~magnet.embedding.TokenEmbeddings` (vectors
        float32 [T_i, D], ids, token strings, character offsets); token t's vector is the final
        state at t-1, the first token's comes from BOS; no instruction by default.
        ``normalize``: unit L2 vectors. ``max_length`` (default: the model's positions, or its
        sliding window where shorter) counts all input tokens; a longer text is truncated
        (``truncate=True``) or rejected.
        """
        from magnet.embedding import embed

        return embed(self, texts, level, pooling, instruction, batch_size, normalize,
                     max_length, truncate, show_progress_bar)

    def encode(self, sentences: str | Sequence[str] | None = None, batch_size: int = 32,
               show_progress_bar: bool | None = None,
               output_value: str | None = "sentence_embedding", convert_to_numpy: bool = True,
               normalize_embeddings: bool = False, *, prompt: str | None = None,
               precision: str | None = "float32", convert_to_tensor: bool = False,
               truncate_dim: int | None = None, pooling: str = "last",
               max_length: int | None = None, **kwargs: Any) -> Any:
        """sentence-transformers-style ``encode`` (for MTEB and similar callers), following
        ``SentenceTransformer.encode`` of sentence-transformers 6.2.

        ``output_value="sentence_embedding"``: float32 [N, D] ([D] for a str) with ``pooling``
        ("last" or "mean") and the default instruction (``prompt=`` replaces it);
        ``truncate_dim=k`` (1 <= k <= D) keeps the first k dims, then ``normalize_embeddings``
        scales to unit length. ``"token_embeddings"``: a list of float32 [T_i, D] arrays (never
        normalized nor truncated). ``None``: per text a dict with ``"input_ids"``,
        ``"attention_mask"``, ``"token_embeddings"`` and ``"sentence_embedding"`` (truncated, not
        normalized). ``precision``: "float32", or "int8"/"uint8" (per-dimension buckets from the
        batch's min/max; needs two or more embeddings) or "binary"/"ubinary" (packed signs, D/8
        bytes), as ``sentence_transformers.quantize_embeddings``. ``convert_to_tensor=True``
        gives torch tensors (ImportError without PyTorch); ``convert_to_numpy=False`` a list of
        [D] arrays. An empty list gives a (0, D) array ([] for the list outputs). ``inputs=``
        (sentence-transformers 6's name) may stand for ``sentences``.
        ``max_length`` counts all input tokens (default: as :meth:`embed`). Ignored
        silently: prompt_name, prompt_type, task_name, task, device, pool, chunk_size,
        processing_kwargs; any other keyword argument is ignored with a UserWarning.
        """
        from magnet.embedding import encode

        return encode(self, sentences, batch_size, show_progress_bar, output_value,
                      convert_to_numpy, normalize_embeddings, prompt=prompt, precision=precision,
                      convert_to_tensor=convert_to_tensor, truncate_dim=truncate_dim,
                      pooling=pooling, max_length=max_length, **kwargs)

    def adapt(self, data: Any, preset: str = "magnet", steps: int = 1000, batch_size: int = 8,
              seq_len: int = 256, lr: float = 2e-4, lora_rank: int = 16,
              lora_alpha: float = 32.0, full_finetune: bool = False,
              weights: dict[str, float] | None = None, seed: int = 0,
              pairs: list[tuple[str, str]] | None = None, eval_data: Any = None,
              checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 200,
              resume: bool = False, progress: bool = True, callback: Any = None,
              **options: Unpack[AdaptOptions]) -> AdaptResult:
        """Adapt the model with MAGNET's objectives (in place); returns an ``AdaptResult``.

        data: a list of str, a ``.txt`` path (one document per blank-line-separated block, or
        one per line when the file holds fewer than two such blocks), a ``.jsonl`` path
        (``text`` field), or any iterable of str (streamed). preset: ``"magnet"`` (MNTP + SSCL
        + MSG), ``"llm2vec"`` (bidirectional MNTP, then SimCSE with mean pooling) or
        ``"mntp"``. Each of ``steps``
        optimizer steps trains on ``batch_size * grad_accum`` chunks of at most ``seq_len``
        tokens: ``grad_accum`` micro-batches of ``batch_size`` chunks, each with its two SSCL
        views (SSCL's negatives are the other rows of the same micro-batch). LoRA (rank
        ``lora_rank``, ``lora_alpha``; targets ``lora_targets``, default every projection)
        unless ``full_finetune``; the adapters stay attached after training (see
        :meth:`merge_lora`, :meth:`save_pretrained`). ``weights`` (e.g. ``{"sscl": 0.5}``)
        replaces an objective's weight in the stages that train it (weight > 0 there); a stage
        where it is 0 keeps 0, so on ``llm2vec`` ``{"sscl": 0.5}`` leaves the MNTP half without
        SSCL. A positive weight for an objective no stage trains, or an MSG weight on a preset
        that makes no spans (``llm2vec``, ``mntp``), raises ValueError. ``pairs``: (text,
        positive) pairs for the training SSCL instead of dropout twins. ``eval_data``: text
        scored after every ``checkpoint_every`` steps and after the last (``eval_batches``
        micro-batches of ``batch_size`` chunks, dropout off, the same masks each time);
        ``eval_history`` holds the mean losses on it, with the weights of the stage in force (a
        loss weighted 0 there reads 0). Its SSCL uses the eval texts, ``pairs`` or not: with
        dropout off the two views of a text are identical, so it measures how well the sentence
        vectors tell the batch's texts apart. ``checkpoint_dir`` / ``checkpoint_every`` /
        ``resume`` write and continue atomic checkpoints; a resume refuses (ValueError) another
        preset or seed, ``steps`` below the checkpoint's, and, for LoRA, base weights other
        than those the adapters were trained on (checked by a hash of a sample of each tensor).
        ``callback(record)`` is called after every step. Every option is checked before the
        model changes: a call that raises leaves it as it was. So does one that runs out of
        memory before its first step, except that attached adapters of another shape, which
        are folded into the weights to make way for the new ones, stay folded in (the outputs
        are the same); once training has begun, the adapters trained so far stay. While it
        runs, another
        ``adapt()`` or a :meth:`to` on this model (from another thread) raises ValueError.
        SSCL needs ``batch_size >= 2``.
        Further options (keyword only; ``magnet.model.AdaptOptions`` types them): lora_targets,
        lora_dropout (0.05), resid_dropout (0.1), warmup_steps (min(100, steps // 10)),
        weight_decay (0), clip_norm (1.0), grad_accum (1), sscl_max_tokens (64), instruction,
        temperature (0.05), stages, eval_batches (4).
        """
        from magnet.adapt import adapt

        with self._exclusively("adapt()"):
            self._adaptations += 1
            return adapt(self, data, preset=preset, steps=steps, batch_size=batch_size,
                         seq_len=seq_len, lr=lr, lora_rank=lora_rank, lora_alpha=lora_alpha,
                         full_finetune=full_finetune, weights=weights, seed=seed, pairs=pairs,
                         eval_data=eval_data, checkpoint_dir=checkpoint_dir,
                         checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                         callback=callback, **options)

    def merge_lora(self) -> None:
        """Fold attached LoRA adapters into the base weights (outputs unchanged)."""
        self._c.merge_lora()

    def save_pretrained(self, out_dir: str | os.PathLike, merge_lora: bool = True) -> Path:
        """Write a Hugging Face directory (config.json, model.safetensors, tokenizer.json).

        Adapters are merged into the written weights (``merge_lora=True``) or saved beside
        them as a peft LoRA adapter (``merge_lora=False``): transformers'
        ``AutoModelForCausalLM.from_pretrained(out_dir)`` and peft load it with the adapter
        applied. ``from_pretrained`` also reads an adapter that peft wrote beside its base
        model (LoRA without DoRA, biases or extra trained modules).
        The write is atomic: a crash leaves any previous directory at ``out_dir`` intact.
        Files there that are not model files (notes, an ``adapt`` checkpoint) are kept; other
        weight files (shards, ``pytorch_model.bin``, a stale adapter) are removed.
        ``out_dir`` cannot be the working directory or hold it.
        ``Model.from_pretrained(out_dir)`` gives the same outputs: bit for bit with
        ``merge_lora=False`` (or after :meth:`merge_lora`), within float rounding otherwise
        (each merged weight is rounded once).
        """
        from magnet.save import save_pretrained

        return save_pretrained(self, out_dir, merge_lora=merge_lora)

    def __reduce__(self) -> Any:
        # pickle (multiprocessing's spawn pools, joblib) would fail deep inside on the C model
        raise TypeError("a magnet.Model cannot be pickled or copied: save it with "
                        "save_pretrained(dir) and load it in the other process with "
                        "Model.from_pretrained(dir), or create the model in each worker "
                        "(fork-started workers inherit it)")

    def __repr__(self) -> str:
        c = self.config
        return (f"magnet.Model({c.model_type or c.arch}, layers={c.num_layers}, "
                f"hidden={c.hidden_size}, vocab={c.vocab_size}, params={self.num_parameters:,})")
