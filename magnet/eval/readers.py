"""Readers of the evaluation data sets, each in its original file layout.

Every reader raises :class:`EvalDataError` (a ``ValueError``) naming the file and the line of
malformed input (or of bytes that are not UTF-8), and ``FileNotFoundError`` naming a missing
file. Lines end at ``\\n`` (or ``\\r\\n``) only, not at the other breaks ``str.splitlines`` knows.
A UTF-8 byte-order mark at the start of a file is dropped.

- STS Benchmark ``sts-{train,dev,test}.csv``: tab-separated genre, file, year, id, score (0-5),
  sentence 1, sentence 2 (some lines carry further source columns, which are ignored).
- SICK ``SICK.txt``: tab-separated with a header naming at least ``sentence_A``, ``sentence_B``,
  ``relatedness_score`` and ``SemEval_set`` (TRAIN / TRIAL / TEST).
- SentEval STS12-16: ``STS.input.<name>.txt`` (two tab-separated sentences a line) with
  ``STS.gs.<name>.txt`` (one gold score a line, beside it); pairs whose gold line is empty are
  skipped, as SentEval does.
- CoNLL-2003 ``eng.*``: ``token POS chunk NER`` a line (chunk and NER in IOB1), blank lines
  between sentences, ``-DOCSTART-`` lines skipped.
- CoNLL-2000 ``*.txt``: ``token POS chunk`` a line (chunk in IOB2).
- CoNLL-U (UD English-EWT): 10 tab-separated columns; multi-word token ranges (``6-7``) and
  empty nodes (``8.1``) are skipped, so the words are the syntactic words. A word's UPOS must be
  one of the 17 Universal POS tags: ``_`` (unspecified) is valid CoNLL-U, but UD treebanks may
  not leave a word's UPOS unspecified and a probe cannot score it; an empty field is invalid.
- WikiText ``wiki.*.tokens``: articles split at their titles, lines `` = Title = `` (one ``=``
  on each side) between blank lines; a body line of that shape (a formula such as
  `` = 1 <unk> and <unk> C = ``) sits beside other text and does not start an article.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from magnet.data import text_lines

_TAG = re.compile(r"^(O|[BIES]-\S+)$")
_ASCII_WS = re.compile(r"[ \t\x0b\x0c]+")  # column separators (not U+00A0, U+2028, ...)
# https://universaldependencies.org/u/pos/
UPOS_TAGS = frozenset(("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART",
                       "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"))


class EvalDataError(ValueError):
    """Malformed evaluation data; the message names the file and line."""


@dataclass
class STSPairs:
    """Sentence pairs with gold similarity scores, from one file."""

    name: str
    s1: list[str]
    s2: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.s1)


@dataclass
class TaggedSentence:
    """One sentence: its words and, per column name, one tag per word."""

    words: list[str]
    tags: dict[str, list[str]] = field(default_factory=dict)


def _lines(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"evaluation data file not found: {os.fspath(path)}")
    return text_lines(p.read_bytes(), os.fspath(p), EvalDataError)


def _score(text: str, path: str | os.PathLike, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise EvalDataError(f"{path}:{lineno}: score {text!r} is not a number") from None
    if not np.isfinite(value):
        raise EvalDataError(f"{path}:{lineno}: score {text!r} is not finite")
    return value


def read_sts_benchmark(path: str | os.PathLike) -> STSPairs:
    """An STS Benchmark csv file (tab-separated, no header, no quoting)."""
    s1, s2, scores = [], [], []
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 7:
            raise EvalDataError(f"{path}:{lineno}: expected 7 tab-separated columns (genre, file, "
                                f"year, id, score, sentence1, sentence2), got {len(cols)}")
        scores.append(_score(cols[4], path, lineno))
        s1.append(cols[5])
        s2.append(cols[6])
    if not s1:
        raise EvalDataError(f"{path}: no sentence pairs")
    return STSPairs(Path(path).stem, s1, s2, np.asarray(scores))


SICK_SPLITS = ("TRAIN", "TRIAL", "TEST")


def read_sick(path: str | os.PathLike, split: str | None = "TEST") -> STSPairs:
    """SICK's ``SICK.txt``: the pairs of ``split`` (TRAIN, TRIAL, TEST; None: all) with their
    relatedness scores (1-5)."""
    if split is not None and split not in SICK_SPLITS:
        raise ValueError(f"split must be one of {SICK_SPLITS} or None, got {split!r}")
    lines = _lines(path)
    if not lines:
        raise EvalDataError(f"{path}: empty file (expected a header line)")
    header = lines[0].split("\t")
    need = ("sentence_A", "sentence_B", "relatedness_score", "SemEval_set")
    missing = [c for c in need if c not in header]
    if missing:
        raise EvalDataError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
    ia, ib, isc, iset = (header.index(c) for c in need)
    s1, s2, scores = [], [], []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < len(header):
            raise EvalDataError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, "
                                f"got {len(cols)}")
        if cols[iset] not in SICK_SPLITS:
            raise EvalDataError(f"{path}:{lineno}: SemEval_set {cols[iset]!r} is not one of "
                                f"{', '.join(SICK_SPLITS)}")
        if split is not None and cols[iset] != split:
            continue
        scores.append(_score(cols[isc], path, lineno))
        s1.append(cols[ia])
        s2.append(cols[ib])
    if not s1:
        raise EvalDataError(f"{path}: no pairs in split {split}")
    return STSPairs(f"SICK-{split or 'all'}", s1, s2, np.asarray(scores))


def read_senteval_sts(directory: str | os.PathLike) -> list[STSPairs]:
    """Every ``STS.input.<name>.txt`` of a SentEval STS12-16 year directory, with its
    ``STS.gs.<name>.txt``, in name order."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"SentEval STS directory not found: {os.fspath(directory)}")
    inputs = sorted(d.glob("STS.input.*.txt"))
    if not inputs:
        raise EvalDataError(f"{d}: no STS.input.<name>.txt files")
    out = []
    for inp in inputs:
        name = inp.name[len("STS.input."):-len(".txt")]
        gold = d / f"STS.gs.{name}.txt"
        sent_lines = _lines(inp)
        gold_lines = _lines(gold)
        if len(sent_lines) != len(gold_lines):
            first = min(len(sent_lines), len(gold_lines)) + 1
            raise EvalDataError(f"{gold}:{first}: {len(gold_lines)} gold lines for "
                                f"{len(sent_lines)} sentence pairs in {inp} (line {first} has no "
                                f"partner)")
        s1, s2, scores = [], [], []
        for lineno, (pair, g) in enumerate(zip(sent_lines, gold_lines, strict=True), 1):
            if not g.strip():
                continue
            cols = pair.split("\t")
            if len(cols) < 2:
                raise EvalDataError(f"{inp}:{lineno}: expected two tab-separated sentences")
            scores.append(_score(g.strip(), gold, lineno))
            s1.append(cols[0])
            s2.append(cols[1])
        if not s1:
            raise EvalDataError(f"{gold}: no scored pairs")
        out.append(STSPairs(name, s1, s2, np.asarray(scores)))
    return out


def _read_columns(path: str | os.PathLike, names: tuple[str, ...], skip_docstart: bool,
                  iob: tuple[str, ...] = ()) -> list[TaggedSentence]:
    """Whitespace-separated ``token tag...`` lines, blank lines between sentences."""
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    cols: list[list[str]] = [[] for _ in names]

    def flush() -> None:
        if words:
            sentences.append(TaggedSentence(list(words), {n: list(c) for n, c in
                                                          zip(names, cols, strict=True)}))
            words.clear()
            for c in cols:
                c.clear()

    for lineno, line in enumerate(_lines(path), 1):
        parts = [x for x in _ASCII_WS.split(line) if x]
        if not parts:
            flush()
            continue
        if skip_docstart and parts[0] == "-DOCSTART-":
            flush()
            continue
        if len(parts) != 1 + len(names):
            raise EvalDataError(f"{path}:{lineno}: expected {1 + len(names)} columns (token, "
                                f"{', '.join(names)}), got {len(parts)}")
        for name, v in zip(names, parts[1:], strict=True):
            if name in iob and not _TAG.match(v):
                raise EvalDataError(f"{path}:{lineno}: {name} tag {v!r} is not O or "
                                    f"B-/I-/E-/S-TYPE")
        words.append(parts[0])
        for c, v in zip(cols, parts[1:], strict=True):
            c.append(v)
    flush()
    if not sentences:
        raise EvalDataError(f"{path}: no sentences")
    return sentences


def read_conll2003(path: str | os.PathLike) -> list[TaggedSentence]:
    """CoNLL-2003: per sentence ``pos``, ``chunk`` and ``ner`` tags (chunk and NER as in the
    file: IOB1)."""
    return _read_columns(path, ("pos", "chunk", "ner"), skip_docstart=True,
                         iob=("chunk", "ner"))


def read_conll2000(path: str | os.PathLike) -> list[TaggedSentence]:
    """CoNLL-2000: per sentence ``pos`` and ``chunk`` tags (IOB2)."""
    return _read_columns(path, ("pos", "chunk"), skip_docstart=False, iob=("chunk",))


def read_conllu(path: str | os.PathLike) -> list[TaggedSentence]:
    """CoNLL-U: per sentence ``upos`` and ``xpos`` tags of its syntactic words."""
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    upos: list[str] = []
    xpos: list[str] = []
    for lineno, line in enumerate([*_lines(path), ""], 1):
        if not line.strip():
            if words:
                sentences.append(TaggedSentence(words, {"upos": upos, "xpos": xpos}))
                words, upos, xpos = [], [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise EvalDataError(f"{path}:{lineno}: expected 10 tab-separated CoNLL-U columns, "
                                f"got {len(cols)}")
        if "-" in cols[0] or "." in cols[0]:
            continue
        if not cols[0].isdigit():
            raise EvalDataError(f"{path}:{lineno}: ID {cols[0]!r} is not a word index")
        if cols[3] not in UPOS_TAGS:
            raise EvalDataError(f"{path}:{lineno}: UPOS {cols[3]!r} is not one of the 17 "
                                f"Universal POS tags ({', '.join(sorted(UPOS_TAGS))})")
        words.append(cols[1])
        upos.append(cols[3])
        xpos.append(cols[4])
    if not sentences:
        raise EvalDataError(f"{path}: no sentences")
    return sentences


# a title line: one "=" on each side (" = = Section = = " is level 2); the title itself neither
# starts nor ends with "="
_HEADING = re.compile(r"^ = [^=](?:.*[^=])? = $")
_WIKI_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's number and hyphen splits (``@-@``, ``@,@``, ``@.@``); nothing else."""
    for a, b in _WIKI_JOINS:
        text = text.replace(a, b)
    return text


def _is_title(lines: list[str], i: int) -> bool:
    """Whether ``lines[i]`` is a WikiText article title: `` = Title = `` with a blank line (or
    the file's edge) before and after it. The blank lines matter: formulas in the body, such as
    wiki.test.tokens's `` = 1 <unk> / s and a nominal <unk> k = `` (line 2149), have the title's
    shape but sit between text lines."""
    return (_HEADING.match(lines[i]) is not None
            and (i == 0 or not lines[i - 1].strip())
            and (i + 1 == len(lines) or not lines[i + 1].strip()))


def read_wikitext(path: str | os.PathLike, detokenize: bool = True) -> list[str]:
    """The articles of a WikiText ``wiki.*.tokens`` file: each starts at a title line
    `` = Title = `` between blank lines (:func:`_is_title`); lines are stripped and joined with
    newlines, blank lines dropped."""
    articles: list[list[str]] = []
    lines = _lines(path)
    for i, line in enumerate(lines):
        if _is_title(lines, i):
            articles.append([])
        text = line.strip()
        if not text:
            continue
        if not articles:
            articles.append([])
        articles[-1].append(detokenize_wikitext(text) if detokenize else text)
    out = ["\n".join(a) for a in articles if a]
    if not out:
        raise EvalDataError(f"{path}: no text")
    return out


def wikitext_paragraphs(path: str | os.PathLike, detokenize: bool = True) -> list[str]:
    """The body paragraphs (non-heading, non-blank lines) of a WikiText file, in order."""
    out = []
    for line in _lines(path):
        text = line.strip()
        if text and not text.startswith("="):
            out.append(detokenize_wikitext(text) if detokenize else text)
    if not out:
        raise EvalDataError(f"{path}: no paragraphs")
    return out
