"""``python -m magnet.eval TASK --model PATH --data PATH [--out results.json] [options]``.

Tasks: ``sts``, the probes ``conll2003-ner``, ``conll2003-pos``, ``conll2003-chunk``,
``conll2000-chunk``, ``ud-upos``, and ``infill``, ``retention``, ``repetition``. ``--data`` is a
file or the data set's directory (probes: the directory with the default train/test files, or
``--train``/``--test``). The result dict is printed as JSON and written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np

from magnet.cli_types import count as _count
from magnet.cli_types import option
from magnet.cli_types import output_path as _path
from magnet.cli_types import seed as _seed
from magnet.eval.tasks import (
    TAGGING_TASKS,
    evaluate_infill,
    evaluate_repetition,
    evaluate_retention,
    evaluate_sts,
    evaluate_tagging,
)

TASKS = ("sts", *TAGGING_TASKS, "infill", "retention", "repetition")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# rates (learning rate, weight decay); counts and seeds: magnet.cli_types
_rate = option(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


PROG = "python -m magnet.eval"


def strict_json(obj: Any) -> Any:
    """``obj`` with NumPy scalars and arrays as Python values and every non-finite float (an
    undefined score) as None, so that ``json.dumps(..., allow_nan=False)`` writes valid JSON."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_writable(path: str) -> None:
    """Raise ValueError unless ``path`` can be written: not a directory, its parent an existing,
    writable directory (and the file itself writable if it exists)."""
    from magnet.save import check_writable_file

    check_writable_file(path, "--out")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The CLI's argument parser; ``prog`` names the command in usage and errors (``magnet
    eval`` when run through the ``magnet`` command)."""
    p = _Parser(prog=prog, description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", required=True, help="model path (magnet.Model.from_pretrained)")
    p.add_argument("--tokenizer", default=None, help="tokenizer file for a llama2.c checkpoint")
    p.add_argument("--data", default=None, help="data file or directory")
    p.add_argument("--out", type=_path, default=None, help="write the result JSON here")
    p.add_argument("--seed", type=_seed, default=0, help="0 <= seed < 2**64")
    p.add_argument("--threads", type=int, default=None, help="C core worker threads")
    p.add_argument("--batch-size", type=_count, default=None, help="sequences per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("sts")
    g.add_argument("--format", choices=("stsb", "sick", "senteval"), default=None)
    g.add_argument("--split", default="test")
    g.add_argument("--pooling", choices=("last", "mean"), default="last")
    g.add_argument("--max-pairs", type=_count, default=None)
    g = p.add_argument_group("probes")
    g.add_argument("--train", default=None, help="train file (overrides --data's default)")
    g.add_argument("--test", default=None, help="test file (overrides --data's default)")
    g.add_argument("--max-sentences", type=_count, default=None, help="train sentences (seeded)")
    g.add_argument("--max-test-sentences", type=_count, default=None,
                   help="test sentences (default: --max-sentences)")
    g.add_argument("--epochs", type=_count, default=10)
    g.add_argument("--lr", type=_rate, default=5e-3)
    g.add_argument("--probe-batch-size", type=_count, default=128)
    g.add_argument("--weight-decay", type=_rate, default=0.0)
    g = p.add_argument_group("infill / retention / repetition")
    g.add_argument("--num-spans", type=_count, default=200)
    g.add_argument("--window", type=_count, default=None,
                   help="tokens per window (infill 128, retention 256)")
    g.add_argument("--stride", type=_count, default=128)
    g.add_argument("--max-tokens", type=_count, default=None, help="retention: first N tokens")
    g.add_argument("--num-prompts", type=_count, default=50)
    g.add_argument("--prompt-tokens", type=_count, default=32)
    g.add_argument("--max-new-tokens", type=_count, default=128)
    g.add_argument("--do-sample", action="store_true")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model and run one task; the result dict."""
    import magnet

    if args.threads is not None:
        magnet.set_num_threads(args.threads)
    if args.data is None and (args.task not in TAGGING_TASKS or not (args.train and args.test)):
        raise ValueError(f"{args.task}: --data is required")
    model = magnet.Model.from_pretrained(args.model, tokenizer=args.tokenizer)
    progress = not args.no_progress

    def bs(default: int) -> int:  # None: the task's default (0 and negatives fail in argparse)
        return default if args.batch_size is None else args.batch_size

    if args.task == "sts":
        res = evaluate_sts(model, args.data, args.format, args.split, bs(32), args.pooling,
                           max_pairs=args.max_pairs, seed=args.seed, progress=progress)
    elif args.task in TAGGING_TASKS:
        res = evaluate_tagging(model, args.task, args.data, args.train, args.test,
                               args.max_sentences, args.max_test_sentences, args.epochs, args.lr,
                               args.probe_batch_size, args.weight_decay, args.seed,
                               embed_batch_size=bs(32), progress=progress)
    elif args.task == "infill":
        res = evaluate_infill(model, args.data, args.num_spans, args.window or 128,
                              seed=args.seed, batch_size=bs(8), progress=progress)
    elif args.task == "retention":
        res = evaluate_retention(model, args.data, args.window or 256, args.stride,
                                 args.max_tokens, bs(4), progress=progress)
    else:
        res = evaluate_repetition(model, args.data, args.num_prompts, args.prompt_tokens,
                                  args.max_new_tokens, args.do_sample, seed=args.seed,
                                  batch_size=bs(8), progress=progress)
    res["model"] = str(args.model)
    return res


def _drop_stdout() -> None:
    """After a failed write to stdout: send what is still buffered, and all later output, to
    /dev/null, so that the flush at exit does not fail again with a traceback."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """CLI entry point; ``prog``: the command's name in usage and errors."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.out:
            check_writable(args.out)  # before the run, not after it
        res = run(args)
    except MemoryError as e:  # keep the core's message (what it tried to allocate)
        msg = str(e) or "out of memory"
        print(f"error: {msg if 'memory' in msg.lower() else 'out of memory: ' + msg}",
              file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, OverflowError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for SIGINT, no traceback
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    text = json.dumps(strict_json(res), indent=2, allow_nan=False)
    rc = 0
    # --out first: a stdout that cannot be written (a full disk, a closed pipe) must not lose
    # the file; the result is printed even when --out fails, so that the run is not lost
    if args.out:
        try:
            from magnet.save import write_file_atomically

            # a failed write (a full disk) leaves the previous results file whole
            write_file_atomically(args.out, lambda f: f.write((text + "\n").encode("utf-8")))
        except OSError as e:
            print(f"error: cannot write --out {args.out}: {e}", file=sys.stderr)
            rc = 2
    try:
        print(text)
        sys.stdout.flush()
    except OSError as e:
        _drop_stdout()
        if rc == 0:  # one error line
            print(f"error: cannot write the result to stdout: {e}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
