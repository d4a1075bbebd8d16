"""GPT's quality figures for generated text.

    distinct_1, distinct_2   unique words (word pairs) / all words (word pairs) in the samples:
                             low values mean the model repeats itself across samples
    repetition_rate          share of a sample's word 4-grams that already appeared in that
                             same sample, averaged: loops like "the the the" push it up
    memorised_8gram_share    share of the samples' word 8-grams found verbatim in the training
                             corpus: high values mean copying, not generating
    held_out_perplexity      from training (the checkpoint's figures), when known

Words are whitespace-separated tokens, so the figures do not depend on the tokenizer.
"""

from __future__ import annotations

from pydantic import BaseModel


class TextQuality(BaseModel):
    num_samples: int
    distinct_1: float
    distinct_2: float
    repetition_rate: float
    memorised_8gram_share: float | None = None
    held_out_perplexity: float | None = None

    def summary(self) -> str:
        parts = [
            f"distinct-1 {self.distinct_1:.3f}",
            f"distinct-2 {self.distinct_2:.3f}",
            f"repetition {self.repetition_rate:.3f}",
        ]
        if self.memorised_8gram_share is not None:
            parts.append(f"memorised 8-grams {self.memorised_8gram_share:.3f}")
        if self.held_out_perplexity is not None:
            parts.append(f"held-out perplexity {self.held_out_perplexity:.1f}")
        return ", ".join(parts)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def score_texts(texts: list[str], corpus: list[str] | None = None, perplexity: float | None = None) -> TextQuality:
    samples = [t.split() for t in texts]
    unigrams = [w for words in samples for w in words]
    bigrams = [g for words in samples for g in _ngrams(words, 2)]
    repetition = []
    for words in samples:
        grams = _ngrams(words, 4)
        if grams:
            repetition.append(1 - len(set(grams)) / len(grams))
    memorised = None
    if corpus is not None:
        known = {g for doc in corpus for g in _ngrams(doc.split(), 8)}
        generated = [g for words in samples for g in _ngrams(words, 8)]
        memorised = round(sum(g in known for g in generated) / len(generated), 4) if generated else 0.0
    return TextQuality(
        num_samples=len(texts),
        distinct_1=round(len(set(unigrams)) / max(len(unigrams), 1), 4),
        distinct_2=round(len(set(bigrams)) / max(len(bigrams), 1), 4),
        repetition_rate=round(sum(repetition) / max(len(repetition), 1), 4),
        memorised_8gram_share=memorised,
        held_out_perplexity=perplexity,
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
    return {"summary": quality.summary(), **quality.model_dump(exclude_none=True)}
