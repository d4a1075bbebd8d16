"""GPT text: a HuggingFace `GPT2LMHeadModel` with a byte-level BPE tokenizer trained here.

    recipe.py    Recipe (model, corpus, training and sampling settings); bring-your-own HF folders
    model.py     the model, the tokenizer, the checkpoint format (save_pretrained + recipe.json)
    training.py  TrainingTask (run by gen_jobs.training.harness on Ray Train): DDP, AdamW, warm-up + cosine
    sampler.py   Sampler: checkpoint -> text (Ray Data and Ray Serve), to_table
    data.py      corpora: Python's own docs (pydoc_data.topics), .txt/.jsonl/.parquet (local or s3://)
    quality.py   distinct-n, repetition, self-BLEU, memorised 8-grams, corpus words, held-out perplexity
    preview.py   the dataset card's excerpts
"""

from gen_jobs.core.family import DemoDefaults, Family

FAMILY = Family(
    name="gpt",
    recipe="gen_jobs.families.gpt.recipe:Recipe",
    training="gen_jobs.families.gpt.training:TrainingTask",
    sampler="gen_jobs.families.gpt.sampler:Sampler",
    to_table="gen_jobs.families.gpt.sampler:to_table",
    score_dataset="gen_jobs.families.gpt.quality:score_dataset",
    figures="gen_jobs.families.gpt.quality:FIGURES",
    preview="gen_jobs.families.gpt.preview:preview",
    describe_epoch="gen_jobs.families.lm.training:describe_epoch",
    rows_from="prompts",
    serve_api="serving.apis.text",
    demo=DemoDefaults(recipe="gpt_pydoc", num_samples=1_000, show="text"),
    foreign_checkpoint="gen_jobs.families.gpt.recipe:recipe_for_pretrained",
    foreign_files=("config.json", "model.safetensors"),
)
