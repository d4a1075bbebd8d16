"""GPT's quality figures for generated text.

    distinct_1, distinct_2   unique words (word pairs) / all words (word pairs) in the samples:
                             low values mean the model repeats itself across samples
    repetition_rate          share of a sample's word 4-grams that already appeared in that
                             same sample, averaged: loops like "the the the" push it up
    memorised_8gram_share    share of the samples' word 8-grams found verbatim in the training
                             corpus: high values mean copying, not generating
    held_out_perplexity      from training (the checkpoint's figures), when known
    copied_words (per row)   words in the longest run of the sample found verbatim in the training
                             corpus (8-word windows; 0: none), and `copy` when it reaches the
                             recipe's quality.copy_words
    corpus_word_share        share of the samples' words (letters only, two or more) that are
                             words of the training corpus: below 0.9 the model invents words
    corpus_distinct_2        distinct-2 of the corpus itself, cut into as many pieces of the
                             samples' mean length as there are samples (distinct-n depends on length)
    distinct_2_ratio         distinct_2 / corpus_distinct_2: near 1 varies as much as real text,
                             well below 1 repeats itself, well above 1 strings words at random

Words are whitespace-separated tokens, so the figures do not depend on the tokenizer.
Goals (the default recipe, warned about when significantly missed): corpus word
share >= 0.9 and distinct-2 within 0.7-1.3x the corpus's.
"""

from __future__ import annotations

import functools
import re

from pydantic import BaseModel

from gen_jobs.significance import in_rows, share_below

WORD = re.compile(r"[A-Za-z]{2,}")
WORD_SHARE_GOAL = 0.9
DISTINCT_2_RANGE = (0.7, 1.3)


class TextQuality(BaseModel):
    num_samples: int
    distinct_1: float
    distinct_2: float
    repetition_rate: float
    memorised_8gram_share: float | None = None
    held_out_perplexity: float | None = None
    corpus_word_share: float | None = None
    corpus_distinct_2: float | None = None
    distinct_2_ratio: float | None = None
    words_checked: int | None = None  # letters-only words of 2+ letters: what corpus_word_share rests on

    def summary(self) -> str:
        parts = [
            f"distinct-1 {self.distinct_1:.3f}",
            f"distinct-2 {self.distinct_2:.3f}",
            f"repetition {self.repetition_rate:.3f}",
        ]
        if self.memorised_8gram_share is not None:
            parts.append(f"memorised 8-grams {self.memorised_8gram_share:.3f}")
        if self.corpus_word_share is not None:
            parts.append(f"corpus words {self.corpus_word_share:.1%}, distinct-2 x{self.distinct_2_ratio:.2f} of the corpus's")
        if self.held_out_perplexity is not None:
            parts.append(f"held-out perplexity {self.held_out_perplexity:.1f}")
        return ", ".join(parts)

    def warnings(self) -> list[str]:
        out = []
        if self.corpus_word_share is not None and share_below(round(self.corpus_word_share * self.words_checked),
                                                              self.words_checked, WORD_SHARE_GOAL):
            out.append(f"only {self.corpus_word_share:.1%} of the words are words of the training corpus "
                       f"(goal {WORD_SHARE_GOAL:.0%}){in_rows(self.num_samples)}: train longer or lower the temperature")
        low, high = DISTINCT_2_RANGE
        if self.distinct_2_ratio is not None and self.num_samples >= 20 and not low <= self.distinct_2_ratio <= high:
            out.append(f"distinct-2 is {self.distinct_2_ratio:.2f}x the corpus's (goal {low}-{high}x){in_rows(self.num_samples)}: "
                       + ("the samples repeat themselves; raise the temperature" if self.distinct_2_ratio < low
                          else "the samples string words at random; lower the temperature"))
        return out


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


SPAN = 8  # words: shorter runs are common phrases, not copying


class CorpusSpans:
    """The training corpus's word 8-grams, to find how much of a sample is copied verbatim."""

    def __init__(self, corpus: list[str]):
        self.known = {g for doc in corpus for g in _ngrams(doc.split(), SPAN)}

    def longest_copied(self, text: str | None) -> int:
        """Words in the longest run whose every 8-word window occurs in the corpus (0: no such run).

        An upper bound on the longest span copied verbatim (exact when the windows come from one place).
        """
        words = (text or "").split()
        longest = run = 0
        for gram in _ngrams(words, SPAN):
            run = run + 1 if gram in self.known else 0
            longest = max(longest, run)
        return longest + SPAN - 1 if longest else 0


@functools.lru_cache(maxsize=2)
def corpus_spans(data_json: str) -> CorpusSpans | None:
    """The recipe's corpus index, built once per process; None when the corpus cannot be read here."""
    from gen_jobs.errors import UserError
    from gen_jobs.families.gpt.data import TextDataConfig, load_documents

    try:
        return CorpusSpans(load_documents(TextDataConfig.model_validate_json(data_json)))
    except (UserError, OSError):  # a bring-your-own model's corpus may be elsewhere
        return None


def distinct_2(samples: list[list[str]]) -> float:
    """Unique word pairs / all word pairs, pairs taken within each sample."""
    bigrams = [g for words in samples for g in _ngrams(words, 2)]
    return round(len(set(bigrams)) / max(len(bigrams), 1), 4)


def corpus_pieces(corpus: list[str], count: int, length: int) -> list[list[str]]:
    """`count` pieces of `length` words, spread evenly over the corpus: its text cut like the samples."""
    words = [w for doc in corpus for w in doc.split()]
    if not words or count == 0:
        return []
    starts = [round(i * max(len(words) - length, 0) / max(count - 1, 1)) for i in range(count)]
    return [words[s: s + length] for s in starts]


def score_texts(texts: list[str], corpus: list[str] | None = None, perplexity: float | None = None) -> TextQuality:
    samples = [t.split() for t in texts]
    unigrams = [w for words in samples for w in words]
    repetition = []
    for words in samples:
        grams = _ngrams(words, 4)
        if grams:
            repetition.append(1 - len(set(grams)) / len(grams))
    figures: dict = {}
    if corpus is not None:
        known = CorpusSpans(corpus).known
        generated = [g for words in samples for g in _ngrams(words, 8)]
        figures["memorised_8gram_share"] = round(sum(g in known for g in generated) / len(generated), 4) if generated else 0.0
        vocabulary = {w for doc in corpus for w in WORD.findall(doc)}
        checked = [w for t in texts for w in WORD.findall(t)]
        figures["words_checked"] = len(checked)
        figures["corpus_word_share"] = round(sum(w in vocabulary for w in checked) / len(checked), 4) if checked else 0.0
        mean_length = round(len(unigrams) / max(len(samples), 1))
        figures["corpus_distinct_2"] = distinct_2(corpus_pieces(corpus, len(samples), mean_length))
        if figures["corpus_distinct_2"]:
            figures["distinct_2_ratio"] = round(distinct_2(samples) / figures["corpus_distinct_2"], 4)
    return TextQuality(
        num_samples=len(texts),
        distinct_1=round(len(set(unigrams)) / max(len(unigrams), 1), 4),
        distinct_2=distinct_2(samples),
        repetition_rate=round(sum(repetition) / max(len(repetition), 1), 4),
        held_out_perplexity=perplexity,
        **figures,
    )


def score_dataset(table, recipe, checkpoint_uri: str) -> dict:
    """Text figures of a generated table (memorisation against the training corpus, when known)."""
    from gen_jobs import checkpoint
    from gen_jobs.errors import UserError
    from gen_jobs.families.gpt.data import load_documents

    perplexity = checkpoint.training_metrics(checkpoint_uri).get("held_out_perplexity")
    try:
        corpus = load_documents(recipe.data)
    except UserError:  # a bring-your-own model's corpus is unknown here
        corpus = None
    quality = score_texts(table.column("text").to_pylist(), corpus, perplexity)
    return {"summary": quality.summary(), "warnings": quality.warnings(), **quality.model_dump(exclude_none=True)}
