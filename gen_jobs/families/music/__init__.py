"""Symbolic music: a GPT-2 decoder over MidiTok REMI tokens, trained on Bach chorales or your MIDI.

    recipe.py    Recipe (tokenizer, model, corpus, training, sampling and audio settings)
    data.py      corpora: music21's bundled Bach chorales, or folders/prefixes of MIDI / MusicXML files
    model.py     the MidiTok tokenizer (saved as JSON in the checkpoint), the model, the checkpoint format
    training.py  TrainingTask (run by gen_jobs.training.harness on Ray Train): DDP, AdamW, warm-up + cosine
    sampler.py   Sampler: checkpoint -> MIDI pieces (Ray Data and Ray Serve), to_table
    analysis.py  what a piece is: notes, key (Krumhansl-Kessler), in-key share, density, intervals
    audio.py     MIDI -> WAV: a deterministic NumPy synthesiser, or FluidSynth with a SoundFont
    quality.py   the dataset's figures against the corpus, beside a random-token baseline
    examples.py  the demo's .mid/.wav files and piano roll beside the dataset; the card's piano rolls
"""

from gen_jobs.core.family import DemoDefaults, Family, GenerateOption

FAMILY = Family(
    name="music",
    recipe="gen_jobs.families.music.recipe:Recipe",
    training="gen_jobs.families.music.training:TrainingTask",
    sampler="gen_jobs.families.music.sampler:Sampler",
    to_table="gen_jobs.families.music.sampler:to_table",
    score_dataset="gen_jobs.families.music.quality:score_dataset",
    figures="gen_jobs.families.music.quality:FIGURE_MEANINGS",
    preview="gen_jobs.families.music.examples:preview",
    describe_epoch="gen_jobs.families.lm.training:describe_epoch",
    rows_from="prompts",  # --num-samples, or --prompts naming primer files / corpus:NAME pieces
    prompt_files=(".mid", ".midi", ".xml", ".mxl", ".musicxml"),
    serve_api="serving.apis.music",
    demo=DemoDefaults(recipe="music_chorales", num_samples=200, show="files",
                      examples="gen_jobs.families.music.examples:write_examples"),
    generate_options=(
        GenerateOption("audio", "add an `audio` column (WAV) rendered from each piece", kind="flag",
                       recipe_key="audio.enabled"),
        GenerateOption("sample_rate", "audio: samples per second, 8000-96000 (default: the recipe's, 22050)",
                       kind="int", recipe_key="audio.sample_rate", needs="audio.enabled", metavar="HZ"),
        GenerateOption("soundfont", "audio: a General MIDI .sf2 (default: an installed one, else a NumPy synthesiser)",
                       recipe_key="audio.soundfont", needs="audio.enabled", metavar="SF2"),
    ),
)
