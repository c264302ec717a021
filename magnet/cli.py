"""The ``magnet`` command line: demo, adapt, embed, infill, generate, eval."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from magnet.cli_types import count as _steps
from magnet.cli_types import output_path as _path
from magnet.cli_types import seed as _seed

DEFAULT_MODEL = "stories260K"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _load(path: str, tokenizer: str | None = None) -> Any:
    import magnet

    return magnet.Model.from_pretrained(path, tokenizer=tokenizer)


def _check_writable(path: str | None, option: str) -> None:
    """Fail early (before loading the model and computing) when ``path`` cannot be written."""
    from magnet.save import check_writable_file

    if path:
        check_writable_file(path, option)


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.input:
        from magnet.data import text_lines

        if args.input == "-":
            data, name = sys.stdin.buffer.read(), "<stdin>"
        else:
            # any readable non-directory: a file, a pipe (/dev/stdin, <(...)), a device
            p = Path(args.input)
            if not p.exists():
                raise FileNotFoundError(f"--input {args.input}: file not found")
            if p.is_dir():
                raise IsADirectoryError(f"--input {args.input}: is a directory")
            data, name = p.read_bytes(), args.input
        texts += text_lines(data, name)  # one text (and one row) per line
    if not texts:
        raise ValueError("no text given (use --text or --input FILE with one text per line)")
    return texts


def _write_json(obj: Any, path: str | None) -> None:
    from magnet.save import write_file_atomically

    text = json.dumps(obj, indent=2, ensure_ascii=False)
    if path:  # a failed write (a full disk) leaves the previous file whole
        write_file_atomically(path, lambda f: f.write((text + "\n").encode("utf-8")))
    else:
        print(text)


def cmd_demo(args: argparse.Namespace) -> None:
    import magnet
    from magnet.demo import run_demo

    if args.threads:
        magnet.set_num_threads(args.threads)
    run_demo(args.model, steps=args.steps, seed=args.seed, progress=not args.quiet)


def cmd_adapt(args: argparse.Namespace) -> None:
    from magnet.save import check_target_dir

    _check_writable(args.json, "--json")
    # the places written after training, checked as save_pretrained and adapt will, but before
    # the model is loaded and trained
    check_target_dir(args.out, "--out")
    if args.checkpoint_dir:
        check_target_dir(args.checkpoint_dir, "--checkpoint-dir", replaced=False)
    m = _load(args.model, args.tokenizer)
    data = "/dev/stdin" if args.data == "-" else args.data  # a pipe, read as .txt
    result = m.adapt(data, preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                     seq_len=args.seq_len, lr=args.lr, lora_rank=args.lora_rank,
                     lora_alpha=args.lora_alpha, full_finetune=args.full_finetune,
                     seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                     checkpoint_every=args.checkpoint_every, resume=args.resume,
                     progress=not args.quiet)
    out = m.save_pretrained(args.out, merge_lora=not args.keep_adapter)
    summary = {"model": str(out), "steps": result.steps, "wall_time_s": result.wall_time_s,
               "first": result.history[0] if result.history else None,
               "last": result.history[-1] if result.history else None}
    _write_json(summary, args.json)


def cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from magnet.save import write_file_atomically

    _check_writable(args.out, "--out")
    texts = _read_texts(args)
    m = _load(args.model, args.tokenizer)
    # through an open file: np.save / np.savez would append .npy / .npz to the name; written
    # beside the target and renamed over it, so a failed write leaves the previous file whole
    if args.level == "sentence":
        vecs = m.embed(texts, pooling=args.pooling, normalize=args.normalize,
                       batch_size=args.batch_size, show_progress_bar=not args.quiet)
        write_file_atomically(args.out, lambda f: np.save(f, vecs))
        print(f"wrote {args.out}: float32 {list(vecs.shape)}")
    else:
        res = m.embed(texts, level="token", normalize=args.normalize,
                      batch_size=args.batch_size, show_progress_bar=not args.quiet)
        arrays = {f"text{i}": r.vectors for i, r in enumerate(res)}
        write_file_atomically(args.out, lambda f: np.savez(f, **arrays))
        print(f"wrote {args.out}: {len(res)} arrays of float32 [T_i, {m.config.hidden_size}]")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed)


def cmd_infill(args: argparse.Namespace) -> None:
    _check_writable(args.json, "--json")
    m = _load(args.model, args.tokenizer)
    r = m.infill(args.text, blank=args.blank, span_tokens=args.span_tokens, **_sampling(args))
    if args.json:
        _write_json({"text": r.text, "spans": r.spans, "span_tokens": r.span_tokens}, args.json)
    print(r.text)


def cmd_generate(args: argparse.Namespace) -> None:
    _check_writable(args.json, "--json")
    m = _load(args.model, args.tokenizer)
    kw = dict(max_new_tokens=args.max_new_tokens, stop=args.stop, **_sampling(args))
    if args.stream:
        # the stream checks its arguments (and sets up its KV cache) as it starts: take its
        # first piece before writing anything, so that an error comes alone
        stream = m.generate(args.prompt, stream=True, **kw)
        first = next(stream, None)
        sys.stdout.write(args.prompt)
        pieces = []
        for piece in itertools.chain(() if first is None else (first,), stream):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.json:
            _write_json({"prompt": args.prompt, "completion": "".join(pieces)}, args.json)
        return
    text = m.generate(args.prompt, **kw)
    if args.json:
        _write_json({"prompt": args.prompt, "completion": text}, args.json)
    print(args.prompt + text)


def cmd_eval(args: argparse.Namespace) -> None:
    try:
        from magnet.eval.__main__ import main as eval_main
    except ImportError:
        raise ValueError("the evaluation suite (magnet.eval) is not installed") from None
    sys.exit(eval_main(args.rest, prog="magnet eval"))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="magnet", description="One decoder that embeds, infills and generates.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=DEFAULT_MODEL,
                        help="model: stories260K (default), a HF directory, .gguf or llama2.c .bin")
        sp.add_argument("--tokenizer", help="tokenizer file for a llama2.c checkpoint")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("demo", help="adapt the embedded model briefly, then embed/infill/generate")
    d.add_argument("--model", default=DEFAULT_MODEL, help="any model (default stories260K)")
    d.add_argument("--steps", type=_steps, default=60,
                   help="adaptation steps, at least 1 (default 60)")
    d.add_argument("--seed", type=_seed, default=0, help="0 <= seed < 2**64 (default 0)")
    d.add_argument("--threads", type=int, default=0, help="worker threads (default: all cores)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("adapt", help="MAGNET adaptation; saves a Hugging Face directory")
    common(a)
    a.add_argument("--data", required=True,
                   help=".txt (blank-line separated) or .jsonl file, or a pipe (read as .txt; "
                        "- for stdin)")
    a.add_argument("--out", type=_path, required=True, help="output model directory")
    a.add_argument("--preset", default="magnet", choices=["magnet", "llm2vec", "mntp"])
    a.add_argument("--steps", type=int, default=1000)
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--seq-len", type=int, default=256)
    a.add_argument("--lr", type=float, default=2e-4)
    a.add_argument("--lora-rank", type=int, default=16)
    a.add_argument("--lora-alpha", type=float, default=32.0)
    a.add_argument("--full-finetune", action="store_true")
    a.add_argument("--keep-adapter", action="store_true",
                   help="save the LoRA adapter beside the base weights instead of merging")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--checkpoint-dir")
    a.add_argument("--checkpoint-every", type=int, default=200)
    a.add_argument("--resume", action="store_true")
    a.add_argument("--json", type=_path,
                   help="write the run summary to this file (default: stdout)")
    a.set_defaults(func=cmd_adapt)

    e = sub.add_parser("embed", help="sentence (.npy) or token (.npz) embeddings")
    common(e)
    e.add_argument("--text", action="append", help="a text (repeatable)")
    e.add_argument("--input", help="UTF-8 file (or pipe; - for stdin) with one text per line "
                   "(one vector or array per line, blank lines included)")
    e.add_argument("--out", type=_path, required=True,
                   help="output file, NumPy .npy (sentence) or .npz (token) format; written at "
                   "exactly this path")
    e.add_argument("--level", default="sentence", choices=["sentence", "token"])
    e.add_argument("--pooling", default="last", choices=["last", "mean"])
    e.add_argument("--normalize", action="store_true")
    e.add_argument("--batch-size", type=int, default=32)
    e.set_defaults(func=cmd_embed)

    def sampling(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--do-sample", action="store_true")
        sp.add_argument("--temperature", type=float, default=1.0)
        sp.add_argument("--top-k", type=int, default=0)
        sp.add_argument("--top-p", type=float, default=1.0)
        sp.add_argument("--min-p", type=float, default=0.0,
                        help="drop tokens below min-p times the top probability (0 = off)")
        sp.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="penalise tokens already in the prompt or output (1 = off)")
        sp.add_argument("--seed", type=int, default=None)
        sp.add_argument("--json", type=_path,
                        help="also write the result as JSON to this file")

    i = sub.add_parser("infill", help="fill [BLANK]s using both sides of the text")
    common(i)
    i.add_argument("--text", required=True, help='text with blanks, e.g. "A [BLANK] dog."')
    i.add_argument("--blank", default="[BLANK]")
    i.add_argument("--span-tokens", type=int, default=None,
                   help="tokens per blank (default: chosen per blank; the lengths are in "
                        "--json's span_tokens)")
    sampling(i)
    i.set_defaults(func=cmd_infill)

    g = sub.add_parser("generate", help="continue a prompt left to right")
    common(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--stream", action="store_true")
    sampling(g)
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("eval", help="evaluation tasks (python -m magnet.eval --help)",
                       add_help=False)
    v.add_argument("rest", nargs=argparse.REMAINDER)
    v.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:  # its own parser (python -m magnet.eval), options and all
        args = argparse.Namespace(func=cmd_eval, rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MemoryError as e:  # keep the core's message (what it tried to allocate)
        msg = str(e).splitlines()[0] if str(e).strip() else ""
        if "memory" not in msg.lower():
            msg = f"out of memory: {msg}" if msg else "out of memory"
        sys.stderr.write(f"magnet: error: {msg}\n")
        return 2
    except (ValueError, TypeError, OSError, OverflowError, FloatingPointError) as e:
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OverflowError):
            msg = f"value out of range ({msg})"
        sys.stderr.write(f"magnet: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("magnet: interrupted\n")
        return 130
    return 0
