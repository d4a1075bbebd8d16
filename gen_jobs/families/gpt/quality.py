"""GPT's quality figures for generated text.

The dataset's figures, and what each means: FIGURES (the dataset card's table). Per row:
`copied_words`, the words in the longest run of the sample found verbatim in the training
corpus (8-word windows; 0: none), and `copy` when it reaches the recipe's quality.copy_words.

Words are whitespace-separated tokens, so the figures do not depend on the tokenizer.
Goals (the default recipe, warned about when significantly missed): corpus word
share >= 0.9 and distinct-2 within 0.7-1.3x the corpus's.
"""

from __future__ import annotations

import functools
import re

import numpy as np
from pydantic import BaseModel

from gen_jobs.quality.memorisation import CorpusWindows, windows
from gen_jobs.quality.significance import in_rows, share_below

WORD = re.compile(r"[A-Za-z]{2,}")
WORD_SHARE_GOAL = 0.9
DISTINCT_2_RANGE = (0.7, 1.3)
SELF_BLEU_SAMPLES = 200  # self-BLEU compares each sample with all others: quadratic, so a fixed subset

FIGURES = {
    "num_samples": "rows the figures rest on",
    "distinct_1": "unique words / all words in the samples: low values mean the model repeats itself across samples",
    "distinct_2": "unique word pairs / all word pairs in the samples",
    "repetition_rate": "share of a sample's word 4-grams that already appeared in that same sample, averaged: "
                       "loops like 'the the the' push it up",
    "self_bleu": f"mean BLEU-4 of each of the first {SELF_BLEU_SAMPLES} samples against all the others: toward 1 the "
                 "samples resemble each other (low diversity across samples); reported, never warned on: it moves "
                 "with the samples' number and length and has no corpus baseline here (distinct_2_ratio, judged "
                 "against the corpus cut to the same size, carries the diversity warning)",
    "memorised_8gram_share": "share of the samples' word 8-grams found verbatim in the training corpus: high values "
                             "mean copying, not generating",
    "held_out_perplexity": "the model's perplexity on held-out corpus text, from training (lower is better)",
    "corpus_word_share": "share of the samples' words (letters only, two or more) that are words of the training "
                         "corpus: below 0.9 the model invents words",
    "corpus_distinct_2": "distinct-2 of the corpus itself, cut into as many pieces of the samples' mean length as "
                         "there are samples (distinct-n depends on length)",
    "distinct_2_ratio": "distinct_2 / corpus_distinct_2: near 1 varies as much as real text, well below 1 repeats "
                        "itself, well above 1 strings words at random",
    "words_checked": "letters-only words of two or more letters that corpus_word_share rests on",
}


class TextQuality(BaseModel):
    num_samples: int
    distinct_1: float
    distinct_2: float
    repetition_rate: float
    self_bleu: float | None = None
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
        if self.self_bleu is not None:
            parts.append(f"self-BLEU {self.self_bleu:.3f}")
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


SPAN = 8  # words: shorter runs are common phrases, not copying


class CorpusSpans(CorpusWindows):
    """The training corpus's word 8-grams, to find how much of a sample is copied verbatim."""

    def __init__(self, corpus: list[str]):
        super().__init__((doc.split() for doc in corpus), SPAN)

    def longest_copied(self, text: str | None) -> int:
        """Words in the longest run whose every 8-word window occurs in the corpus (0: no such run)."""
        return super().longest_copied((text or "").split())


@functools.lru_cache(maxsize=2)
def corpus_spans(data_json: str) -> CorpusSpans | None:
    """The recipe's corpus index, built once per process; None when the corpus cannot be read here."""
    from gen_jobs.core.errors import UserError
    from gen_jobs.families.gpt.data import TextDataConfig, load_documents

    try:
        return CorpusSpans(load_documents(TextDataConfig.model_validate_json(data_json)))
    except (UserError, OSError):  # a bring-your-own model's corpus may be elsewhere
        return None


def distinct_2(samples: list[list[str]]) -> float:
    """Unique word pairs / all word pairs, pairs taken within each sample."""
    bigrams = [g for words in samples for g in windows(words, 2)]
    return round(len(set(bigrams)) / max(len(bigrams), 1), 4)


def corpus_pieces(corpus: list[str], count: int, length: int) -> list[list[str]]:
    """`count` pieces of `length` words, spread evenly over the corpus: its text cut like the samples."""
    words = [w for doc in corpus for w in doc.split()]
    if not words or count == 0:
        return []
    starts = [round(i * max(len(words) - length, 0) / max(count - 1, 1)) for i in range(count)]
    return [words[s: s + length] for s in starts]


def self_bleu(samples: list[list[str]], max_n: int = 4) -> float | None:
    """Mean BLEU-4 of each sample (word lists) against all the others as references (Zhu et al. 2018, Texygen).

    High (toward 1) means the samples resemble each other: low diversity across samples.
    Clipped n-gram precisions with add-one smoothing for n > 1, brevity penalty against the
    closest reference length. None with fewer than two non-empty samples.
    """
    import math
    from collections import Counter

    samples = [s for s in samples[:SELF_BLEU_SAMPLES] if s]
    if len(samples) < 2:
        return None
    lengths = np.array([len(s) for s in samples])
    counts = [[Counter(windows(s, n)) for s in samples] for n in range(1, max_n + 1)]
    # Per n-gram the two largest counts over samples and whose the largest is: the best reference
    # count of a sample is the largest, or the second when the largest is its own.
    top = []
    for per_sample in counts:
        best: dict[tuple, list] = {}
        for i, c in enumerate(per_sample):
            for gram, k in c.items():
                first, owner, second = best.get(gram, (0, -1, 0))
                if k > first:
                    best[gram] = [k, i, first]
                elif k > second:
                    best[gram] = [first, owner, k]
        top.append(best)
    scores = []
    for i, words in enumerate(samples):
        log_precision = 0.0
        for n in range(max_n):
            hypothesis = counts[n][i]
            total = sum(hypothesis.values())
            clipped = sum(min(k, top[n][g][2] if top[n][g][1] == i else top[n][g][0]) for g, k in hypothesis.items())
            smooth = 0 if n == 0 else 1
            if total + smooth == 0 or clipped + smooth == 0:
                log_precision = -math.inf
                break
            log_precision += math.log((clipped + smooth) / (total + smooth)) / max_n
        others = np.delete(lengths, i)
        closest = int(others[np.argmin(np.abs(others - len(words)))])
        brevity = 1.0 if len(words) > closest else math.exp(1 - closest / len(words))
        scores.append(brevity * math.exp(log_precision) if log_precision > -math.inf else 0.0)
    return round(float(np.mean(scores)), 4)


def score_texts(texts: list[str], corpus: list[str] | None = None, perplexity: float | None = None) -> TextQuality:
    samples = [t.split() for t in texts]
    unigrams = [w for words in samples for w in words]
    repetition = []
    for words in samples:
        grams = windows(words, 4)
        if grams:
            repetition.append(1 - len(set(grams)) / len(grams))
    figures: dict = {}
    if corpus is not None:
        known = CorpusSpans(corpus).known
        generated = [g for words in samples for g in windows(words, 8)]
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
        self_bleu=self_bleu(samples),
        held_out_perplexity=perplexity,
        **figures,
    )


def score_dataset(table, recipe, checkpoint_uri: str) -> dict:
    """Text figures of a generated table (memorisation against the training corpus, when known)."""
    from gen_jobs.core import checkpoint
    from gen_jobs.core.errors import UserError
    from gen_jobs.families.gpt.data import load_documents

    perplexity = checkpoint.training_metrics(checkpoint_uri).get("held_out_perplexity")
    try:
        corpus = load_documents(recipe.data)
    except UserError:  # a bring-your-own model's corpus is unknown here
        corpus = None
    quality = score_texts(table.column("text").to_pylist(), corpus, perplexity)
    return {"summary": quality.summary(), "warnings": quality.warnings(), **quality.model_dump(exclude_none=True)}
