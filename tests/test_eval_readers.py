"""magnet.eval.readers on small fixtures in each layout, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from magnet.eval import readers
from magnet.eval.readers import EvalDataError

FIX = Path(__file__).parent / "fixtures" / "eval"


def test_sts_benchmark() -> None:
    p = readers.read_sts_benchmark(FIX / "stsb" / "sts-test.csv")
    assert len(p) == 4
    assert p.s1[2] == "The cat sat on the mat." and p.s2[2] == "A cat is sitting on a mat."
    assert p.scores.tolist() == [5.0, 0.5, 3.2, 1.0]


def test_sick_splits() -> None:
    test = readers.read_sick(FIX / "sick" / "SICK.txt")
    assert test.s1 == ["A man is cooking.", "Two dogs play.", "A bird flies."]
    assert test.scores.tolist() == [1.2, 4.9, 4.1]
    assert len(readers.read_sick(FIX / "sick" / "SICK.txt", "TRAIN")) == 1
    assert len(readers.read_sick(FIX / "sick" / "SICK.txt", None)) == 5


def test_senteval_skips_empty_gold() -> None:
    files = readers.read_senteval_sts(FIX / "senteval")
    assert [f.name for f in files] == ["headlines", "images"]
    assert len(files[0]) == 3 and files[0].scores.tolist() == [5.0, 0.4, 1.0]
    assert files[0].s1[2] == "I like green tea."


def test_conll2003() -> None:
    sents = readers.read_conll2003(FIX / "conll2003.txt")
    assert len(sents) == 4  # -DOCSTART- lines skipped
    assert sents[0].words[:3] == ["EU", "rejects", "German"]
    assert sents[0].tags["ner"][:3] == ["I-ORG", "O", "I-MISC"]
    assert sents[3].tags["chunk"][:2] == ["I-NP", "B-NP"]
    assert sents[1].tags["pos"] == ["NNP", "NNP"]


def test_conll2000_and_conllu() -> None:
    sents = readers.read_conll2000(FIX / "conll2000.txt")
    assert len(sents) == 2 and sents[1].tags["chunk"] == ["B-NP", "B-PP", "B-NP", "I-NP"]
    ud = readers.read_conllu(FIX / "tiny.conllu")
    assert ud[0].words == ["Google", "'s", "office", "is", "big", "."]  # 1-2 and 5.1 skipped
    assert ud[0].tags["upos"] == ["PROPN", "PART", "NOUN", "AUX", "ADJ", "PUNCT"]
    assert ud[1].tags["upos"] == ["INTJ", "ADV"]


def test_wikitext() -> None:
    arts = readers.read_wikitext(FIX / "wiki.tokens")
    assert len(arts) == 2
    assert arts[0].startswith("= Alpha Story =")
    assert "Part-two" in arts[0] and "1,000" in arts[1]
    paras = readers.wikitext_paragraphs(FIX / "wiki.tokens")
    assert len(paras) == 8 and not any(p.startswith("=") for p in paras)


def test_wikitext_formula_lines_are_not_titles(tmp_path: Path) -> None:
    # wiki.test.tokens lines 2148-2152 ("Constant k filter"): formulas of the title's shape
    # between body lines; a title has blank lines around it
    f = tmp_path / "wiki.tokens"
    f.write_text(" \n = Filter = \n \n Intro text . \n \n = = Section = = \n \n"
                 " The plots correspond to a prototype section . \n"
                 " = 1 <unk> / s and a nominal <unk> k = \n"
                 " 1 <unk> . This is produced by a half section . \n"
                 " = 1 <unk> and <unk> C = \n"
                 " 1 <unk> . This prototype can be scaled . \n \n = Next = \n \n Body . \n",
                 encoding="utf-8")
    arts = readers.read_wikitext(f)
    assert [a.split("\n")[0] for a in arts] == ["= Filter =", "= Next ="]
    assert "= 1 <unk> and <unk> C =" in arts[0].split("\n")


def test_wikitext2_article_counts(shared_data: Path) -> None:
    # WikiText-2's test and validation splits hold 60 articles each
    for name in ("wiki.test.tokens", "wiki.valid.tokens"):
        f = shared_data / "wikitext2" / name
        if not f.is_file():
            pytest.skip(f"{f} not found")
        assert len(readers.read_wikitext(f)) == 60, name


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    for fn in (readers.read_sts_benchmark, readers.read_sick, readers.read_conll2003,
               readers.read_conll2000, readers.read_conllu, readers.read_wikitext):
        with pytest.raises(FileNotFoundError, match="nope.txt"):
            fn(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="missing"):
        readers.read_senteval_sts(tmp_path / "missing")


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "sts.csv"
    f.write_text("g\tf\t2012\t1\t4.0\ta\tb\ng\tf\t2012\t2\tx.y\ta\tb\n")
    with pytest.raises(EvalDataError, match=r"sts.csv:2: score 'x.y'"):
        readers.read_sts_benchmark(f)
    f.write_text("g\tf\t2012\t1\t4.0\tonly one sentence\n")
    with pytest.raises(EvalDataError, match=r"sts.csv:1: expected 7"):
        readers.read_sts_benchmark(f)

    f = tmp_path / "SICK.txt"
    f.write_text("pair_ID\tsentence_A\tsentence_B\n")
    with pytest.raises(EvalDataError, match=r"SICK.txt:1: header lacks .*relatedness_score"):
        readers.read_sick(f)
    f.write_text("sentence_A\tsentence_B\trelatedness_score\tSemEval_set\na\tb\t3\tDEV\n")
    with pytest.raises(EvalDataError, match=r"SICK.txt:2: SemEval_set 'DEV'"):
        readers.read_sick(f)

    f = tmp_path / "eng.train"
    f.write_text("EU NNP I-NP I-ORG\nrejects VBZ I-VP\n")
    with pytest.raises(EvalDataError, match=r"eng.train:2: expected 4 columns"):
        readers.read_conll2003(f)
    f.write_text("EU NNP I-NP I-ORG\n\nrejects VBZ I-VP X-ORG\n")
    with pytest.raises(EvalDataError, match=r"eng.train:3: ner tag 'X-ORG'"):
        readers.read_conll2003(f)

    f = tmp_path / "t.conllu"
    f.write_text("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n2\tthere\tthere\tADV\n")
    with pytest.raises(EvalDataError, match=r"t.conllu:2: expected 10"):
        readers.read_conllu(f)


def test_senteval_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "STS.input.x.txt").write_text("a\tb\nc\td\ne\tf\n")
    (tmp_path / "STS.gs.x.txt").write_text("1\n2\n")
    with pytest.raises(EvalDataError, match=r"STS.gs.x.txt:3: 2 gold lines for 3"):
        readers.read_senteval_sts(tmp_path)
    (tmp_path / "STS.gs.x.txt").write_text("1\nfive\n2\n")
    with pytest.raises(EvalDataError, match=r"STS.gs.x.txt:2: score 'five'"):
        readers.read_senteval_sts(tmp_path)
    (tmp_path / "STS.gs.x.txt").unlink()
    with pytest.raises(FileNotFoundError, match="STS.gs.x.txt"):
        readers.read_senteval_sts(tmp_path)


def test_lines_end_at_newline_only(tmp_path: Path) -> None:
    # str.splitlines() would also break at \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029
    odd = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    f = tmp_path / "sts-test.csv"
    f.write_bytes(("g\tf\t2012\t1\t3.0\tA man\u2028plays.\tA man plays.\r\n"
                   f"g\tf\t2012\t2\t4.0\tA{odd}dog.\tA dog runs.\n").encode())
    p = readers.read_sts_benchmark(f)
    assert p.s1 == ["A man\u2028plays.", f"A{odd}dog."] and p.s2[0] == "A man plays."
    assert p.scores.tolist() == [3.0, 4.0]
    # line numbers do not drift past such a character
    f.write_text("g\tf\t2012\t1\t3.0\ta\u2028b\tc\ng\tf\t2012\t2\t4.0\tonly one\n",
                 encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"sts-test.csv:2: expected 7"):
        readers.read_sts_benchmark(f)

    d = tmp_path / "senteval"
    d.mkdir()
    (d / "STS.input.x.txt").write_text("A\x85b.\tc.\nd.\te\u2029f.\n", encoding="utf-8")
    (d / "STS.gs.x.txt").write_text("1\r\n2\r\n")
    (x,) = readers.read_senteval_sts(d)
    assert x.s1 == ["A\x85b.", "d."] and x.s2 == ["c.", "e\u2029f."]
    assert x.scores.tolist() == [1.0, 2.0]

    f = tmp_path / "eng.train"
    f.write_text("New\xa0York NNP I-NP I-LOC\ncity\u2028 NN I-NP O\n\nHi UH I-INTJ O\n",
                 encoding="utf-8")
    sents = readers.read_conll2003(f)
    assert [s.words for s in sents] == [["New\xa0York", "city\u2028"], ["Hi"]]

    f = tmp_path / "wiki.tokens"
    # titles between blank lines, as WikiText has them
    f.write_text(" = A = \n \n a\x0cb \n \n = B = \n \n c \n", encoding="utf-8")
    assert readers.read_wikitext(f) == ["= A =\na\x0cb", "= B =\nc"]


def test_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "sts.csv"
    f.write_bytes(b"g\tf\ty\t1\t3\ta\tb\ng\tf\ty\t2\t3\t\xff\tb\n")
    with pytest.raises(EvalDataError, match=r"sts.csv:2: not UTF-8 text .*byte 11 of the line"):
        readers.read_sts_benchmark(f)
    f = tmp_path / "t.conllu"
    f.write_bytes(b"# text = caf\xe9\n")
    with pytest.raises(EvalDataError, match=r"t.conllu:1: not UTF-8"):
        readers.read_conllu(f)


def test_conllu_upos_must_be_universal(tmp_path: Path) -> None:
    f = tmp_path / "t.conllu"
    good = "1\tEU\tEU\tPROPN\tNNP\t_\t0\troot\t_\t_\n"
    for upos in ("FOO", "", "_", "propn"):
        f.write_text(f"# c\n{good}2\trejects\treject\t{upos}\tVBZ\t_\t1\tdep\t_\t_\n\n",
                     encoding="utf-8")
        with pytest.raises(EvalDataError, match=rf"t.conllu:3: UPOS {upos!r} is not one of the "
                                                r"17 Universal POS tags"):
            readers.read_conllu(f)
    # "_" on a multi-word token line is fine (the line is skipped)
    f.write_text(f"1-2\tEU's\t_\t_\t_\t_\t_\t_\t_\t_\n{good}2\t's\t's\tPART\tPOS\t_\t1\tcase\t_\t_\n",
                 encoding="utf-8")
    assert readers.read_conllu(f)[0].tags["upos"] == ["PROPN", "PART"]


def test_leading_bom_is_dropped(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    f = tmp_path / "eng.train"
    f.write_bytes(bom + b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n\n")
    assert [s.words for s in readers.read_conll2003(f)] == [["EU"]]
    f = tmp_path / "t.conllu"
    f.write_bytes(bom + b"# sent_id = 1\n1\tEU\tEU\tPROPN\tNNP\t_\t0\troot\t_\t_\n\n")
    assert readers.read_conllu(f)[0].words == ["EU"]
    f = tmp_path / "train.txt"
    f.write_bytes(bom + b"EU NNP B-NP\n")
    assert readers.read_conll2000(f)[0].words == ["EU"]
    f = tmp_path / "SICK.txt"
    f.write_bytes(bom + b"sentence_A\tsentence_B\trelatedness_score\tSemEval_set\na\tb\t3\tTEST\n")
    assert readers.read_sick(f).s1 == ["a"]
    f = tmp_path / "sts-test.csv"
    f.write_bytes(bom + b"g\tf\t2012\t1\t3.0\tA\tB\n")
    assert readers.read_sts_benchmark(f).s1 == ["A"]
    f = tmp_path / "wiki.tokens"
    f.write_bytes(bom + b" = A = \n a b \n")
    assert readers.read_wikitext(f) == ["= A =\na b"]
    assert readers.wikitext_paragraphs(f) == ["a b"]
    d = tmp_path / "senteval"
    d.mkdir()
    (d / "STS.input.x.txt").write_bytes(bom + b"a\tb\n")
    (d / "STS.gs.x.txt").write_bytes(bom + b"4.5\n")
    (x,) = readers.read_senteval_sts(d)
    assert x.s1 == ["a"] and x.scores.tolist() == [4.5]
    # only at the start of the file: elsewhere U+FEFF is text
    f = tmp_path / "sts-test.csv"
    f.write_bytes(b"g\tf\t2012\t1\t3.0\t\xef\xbb\xbfA\tB\n")
    assert readers.read_sts_benchmark(f).s1 == ["\ufeffA"]
