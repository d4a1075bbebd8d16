"""The music family's quality figures: generated pieces against the training corpus, beside random tokens.

The figures, and what each means: FIGURE_MEANINGS (the dataset card's table).

Each figure is given for the generated pieces, the corpus itself and a
baseline of uniformly random tokens decoded the same way, so the numbers mean
something. Goal (default recipe): in-key share >= 0.9x the corpus's; below it is a
warning when the pieces' in-key shares are significantly below it (`gen_jobs.quality.significance`).
Pitch classes further from the corpus's than random tokens' are a warning when resampling the pieces
does not explain it. Unplayable pieces are always a warning: that is a fact about the rows, not an estimate.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from gen_jobs.families.music.analysis import Notes, describe
from gen_jobs.quality.memorisation import CorpusWindows, windows
from gen_jobs.quality.significance import Z_SIGNIFICANT, in_rows, mean_below

MIN_NOTES = 8
IN_KEY_GOAL = 0.9  # of the corpus's own in-key share
FIGURES = ("in_key_share", "notes_per_second", "pitch_range", "inter_onset_s")
FIGURE_MEANINGS = {
    "num_samples": "rows the figures rest on",
    "playable_share": "pieces whose `midi` parses with mido and holds at least 8 notes",
    "in_key_share": "duration-weighted share of notes in the piece's estimated key (Krumhansl-Kessler), averaged",
    "in_key_ratio": "the pieces' in-key share over the corpus's: the goal is 0.9 or more",
    "pitch_class_distance": "total-variation distance between the pieces' and the corpus's pitch-class histograms "
                            "(0 the same, 1 disjoint)",
    "notes_per_second": "notes per second, averaged per piece",
    "pitch_range": "highest minus lowest pitch in semitones, averaged per piece",
    "inter_onset_s": "seconds between successive note onsets, averaged per piece",
    "copied_8gram_share": "share of the pieces' 8-token sequences found verbatim in the corpus: high values mean "
                          "copying, not composing",
    "held_out_perplexity": "the model's perplexity on held-out corpus tokens, from training (lower is better)",
}
# Per row: `copied_tokens`, the tokens in the longest run of the continuation (the primer left out) whose
# every 8-token window is in the training corpus (0: none), and `copy` when it reaches quality.copy_tokens.  # `generated.`, `corpus.` and `random_tokens.` figures: the pieces, the corpus, uniformly random tokens


SPAN = 8  # tokens: the window a copied run is made of (as copied_8gram_share)


@functools.lru_cache(maxsize=2)
def corpus_tokens(data_json: str, tokenizer_json: str) -> CorpusWindows | None:
    """The recipe's corpus as tokens, indexed once per process (~1.5 s for the chorales); None when the
    corpus cannot be read here (a bring-your-own corpus may be elsewhere)."""
    from gen_jobs.core.errors import UserError
    from gen_jobs.families.music.data import load_corpus
    from gen_jobs.families.music.model import build_tokenizer, encode
    from gen_jobs.families.music.recipe import MusicDataConfig, TokenizerConfig

    tokenizer = build_tokenizer(TokenizerConfig.model_validate_json(tokenizer_json))
    try:
        corpus = load_corpus(MusicDataConfig.model_validate_json(data_json))
    except (UserError, OSError):
        return None
    return CorpusWindows((encode(tokenizer, m) for m in corpus.midi), SPAN)


def playable(midi: bytes) -> bool:
    """mido reads it and it holds at least MIN_NOTES notes."""
    import mido

    try:
        f = mido.MidiFile(file=io.BytesIO(midi))
    except Exception:  # noqa: BLE001 - mido raises several types for malformed files
        return False
    return sum(1 for track in f.tracks for m in track if m.type == "note_on" and m.velocity > 0) >= MIN_NOTES


def resampled_distance_spread(piece_counts: np.ndarray, reference: np.ndarray, resamples: int = 200) -> float:
    """Standard deviation of the pitch-class distance to `reference` when the pieces (rows of per-piece
    pitch-class counts, pieces x 12) are resampled with replacement: how much the figure rests on which pieces."""
    if len(piece_counts) < 2:
        return float("inf")  # one piece: no honest spread, so no warning rests on it
    generator = np.random.default_rng(0)
    distances = []
    for _ in range(resamples):
        hist = piece_counts[generator.integers(0, len(piece_counts), len(piece_counts))].sum(axis=0)
        if hist.sum():
            distances.append(0.5 * float(np.abs(hist / hist.sum() - reference).sum()))
    return float(np.std(distances)) if len(distances) > 1 else float("inf")


def figures(scores: list, token_lists: list[list[int]], corpus_grams: set | None) -> dict[str, float]:
    """Averaged per-piece figures, the aggregate pitch-class histogram and the copied 8-gram share."""
    notes = [Notes.of(s) for s in scores]
    per_piece = [describe(n) for n in notes if len(n)]
    out = {k: round(float(np.mean([p[k] for p in per_piece])), 4) if per_piece else 0.0 for k in FIGURES}
    out["_in_key_per_piece"] = [p["in_key_share"] for p in per_piece]
    per_piece_counts = np.array([n.pitch_classes() * max(len(n), 1) for n in notes]).reshape(len(notes), 12)
    out["_piece_pitch_counts"] = per_piece_counts  # pieces x 12: what the pitch-class test resamples
    hist = per_piece_counts.sum(axis=0)
    out["_pitch_classes"] = hist / hist.sum() if hist.sum() else hist
    if corpus_grams is not None:
        grams = [g for ids in token_lists for g in windows(ids, SPAN)]
        out["copied_8gram_share"] = round(sum(g in corpus_grams for g in grams) / len(grams), 4) if grams else 0.0
    return out


def score_pieces(midi: list[bytes], token_lists: list[list[int]], corpus_midi: list[bytes], tokenizer,
                 max_new_tokens: int, perplexity: float | None = None) -> dict:
    """The figures of generated pieces, the corpus and a random-token baseline, with a summary and warnings."""
    import symusic

    from gen_jobs.families.music.model import decode, encode, special_ids

    corpus_ids = [encode(tokenizer, m) for m in corpus_midi]
    grams = CorpusWindows(corpus_ids, SPAN).known
    generated = figures([symusic.Score.from_midi(m) for m in midi], token_lists, grams)
    corpus = figures([symusic.Score.from_midi(m) for m in corpus_midi], [], None)
    rng = np.random.default_rng(0)  # the baseline is fixed: the same figures for every dataset
    special = set(special_ids(tokenizer))
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    random_ids = [rng.choice(vocab, max_new_tokens).tolist() for _ in range(32)]
    baseline = figures([decode(tokenizer, ids) for ids in random_ids], random_ids, grams)
    reference = corpus["_pitch_classes"]
    for f in (generated, corpus, baseline):
        f["pitch_class_distance"] = round(0.5 * float(np.abs(f.pop("_pitch_classes") - reference).sum()), 4)
    pitch_spread = resampled_distance_spread(generated.pop("_piece_pitch_counts"), reference)
    for f in (corpus, baseline):
        f.pop("_piece_pitch_counts")
    in_key_per_piece = generated.pop("_in_key_per_piece")
    for f in (corpus, baseline):
        f.pop("_in_key_per_piece")
    share = round(sum(playable(m) for m in midi) / max(len(midi), 1), 4)
    ratio = round(generated["in_key_share"] / corpus["in_key_share"], 3) if corpus["in_key_share"] else None
    warnings = []
    if share < 1:
        warnings.append(f"{len(midi) - round(share * len(midi))} of {len(midi)} pieces are not playable "
                        f"(unreadable or fewer than {MIN_NOTES} notes)")
    # In key below the goal is a warning only when the pieces are significantly below it, not a few pieces' luck.
    if ratio is not None and ratio < IN_KEY_GOAL and mean_below(in_key_per_piece, IN_KEY_GOAL * corpus["in_key_share"]):
        warnings.append(f"in-key share {generated['in_key_share']:.3f} is {ratio:.2f}x the corpus's "
                        f"{corpus['in_key_share']:.3f} (goal >= {IN_KEY_GOAL}x{in_rows(len(midi))}): "
                        "train longer or lower the temperature")
    # Pitch classes no closer to the chorales' than random tokens' (a model stuck on a few pitches), beyond
    # what resampling these pieces moves the distance by: the same test at any number of rows.
    distance, random_distance = generated["pitch_class_distance"], baseline["pitch_class_distance"]
    if distance - Z_SIGNIFICANT * pitch_spread > random_distance:
        warnings.append(f"the pieces' pitch classes are further from the corpus's than random tokens' (distance "
                        f"{distance:.3f}, random {random_distance:.3f}{in_rows(len(midi))}): the model is stuck on "
                        "a few pitches; train longer or raise the temperature")
    summary = (f"{share:.0%} playable, in-key {generated['in_key_share']:.3f} (corpus {corpus['in_key_share']:.3f}, "
               f"random {baseline['in_key_share']:.3f}), pitch-class distance {generated['pitch_class_distance']:.3f} "
               f"(random {baseline['pitch_class_distance']:.3f}), copied 8-grams {generated['copied_8gram_share']:.3f} "
               f"(random {baseline['copied_8gram_share']:.3f})")
    if perplexity is not None:
        summary += f", held-out perplexity {perplexity:.2f}"
    return {"summary": summary, "num_samples": len(midi), "playable_share": share, "in_key_ratio": ratio,
            "generated": generated, "corpus": corpus, "random_tokens": baseline,
            "held_out_perplexity": perplexity, "warnings": warnings}


def score_dataset(table, recipe, checkpoint_uri: str) -> dict:
    """Music figures of a generated table, against the recipe's corpus."""
    from gen_jobs.core import checkpoint, storage
    from gen_jobs.core.errors import UserError
    from gen_jobs.families.music.data import load_corpus
    from gen_jobs.families.music.model import TOKENIZER_FILE, tokenizer_from_json

    tokenizer = tokenizer_from_json(storage.read_bytes(storage.join(checkpoint_uri, TOKENIZER_FILE)).decode())
    try:
        corpus = load_corpus(recipe.data).midi
    except UserError:  # the corpus is not reachable from here
        return None
    perplexity = checkpoint.training_metrics(checkpoint_uri).get("held_out_perplexity")
    tokens = [list(t) for t in table.column("tokens").to_pylist()]
    return score_pieces(table.column("midi").to_pylist(), tokens, corpus, tokenizer,
                        recipe.sampling.max_new_tokens, perplexity)
