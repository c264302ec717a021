"""magnet.eval: the evaluation suite (STS, token-level probes, infilling, repetition, retention).

Every ``evaluate_*`` function takes a model and data paths and returns a plain dict; the CLI
``python -m magnet.eval TASK --model PATH --data PATH [--out results.json]`` wraps them.
Modules: :mod:`~magnet.eval.readers` (file formats), :mod:`~magnet.eval.metrics`,
:mod:`~magnet.eval.probe` (word vectors and the C-trained linear probe),
:mod:`~magnet.eval.tasks`.
"""

from magnet.eval.metrics import (
    accuracy,
    entity_scores,
    get_entities,
    iob1_to_iob2,
    pearson,
    perplexity,
    rankdata,
    repeated_ngram_share,
    repeated_sentence_share,
    repetition_scores,
    spearman,
    split_sentences,
)
from magnet.eval.probe import Probe, first_subtokens, token_vectors, train_probe, word_vectors
from magnet.eval.readers import (
    EvalDataError,
    STSPairs,
    TaggedSentence,
    read_conll2000,
    read_conll2003,
    read_conllu,
    read_senteval_sts,
    read_sick,
    read_sts_benchmark,
    read_wikitext,
    wikitext_paragraphs,
)
from magnet.eval.tasks import (
    TAGGING_TASKS,
    evaluate_infill,
    evaluate_repetition,
    evaluate_retention,
    evaluate_sts,
    evaluate_tagging,
    sentence_embeddings,
)

__all__ = [
    "TAGGING_TASKS",
    "EvalDataError",
    "Probe",
    "STSPairs",
    "TaggedSentence",
    "accuracy",
    "entity_scores",
    "evaluate_infill",
    "evaluate_repetition",
    "evaluate_retention",
    "evaluate_sts",
    "evaluate_tagging",
    "first_subtokens",
    "get_entities",
    "iob1_to_iob2",
    "pearson",
    "perplexity",
    "rankdata",
    "read_conll2000",
    "read_conll2003",
    "read_conllu",
    "read_senteval_sts",
    "read_sick",
    "read_sts_benchmark",
    "read_wikitext",
    "repeated_ngram_share",
    "repeated_sentence_share",
    "repetition_scores",
    "sentence_embeddings",
    "spearman",
    "split_sentences",
    "token_vectors",
    "train_probe",
    "wikitext_paragraphs",
    "word_vectors",
]
