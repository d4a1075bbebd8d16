"""DCGAN images: a class-conditional DCGAN with the stabilisers small data needs.

    recipe.py    Recipe (model, data, training settings)
    model.py     Generator, Discriminator
    training.py  the GAN step and TrainingTask (run by gen_jobs.training.harness on Ray Train)
    sampler.py   Sampler: checkpoint -> images (Ray Data and Ray Serve), to_table

Shared with the other image families: its training data (gen_jobs.data.image_sources: the bundled
digits, image folders, Parquet, local or s3://), its rows' table (gen_jobs.data.image_rows), its digits
figures (gen_jobs.quality.digits: classes covered, diversity, label agreement, TSTR, PRDC, Fréchet on
random-conv features, and each row's confidence and distance to the training digits) and the dataset
card's picture (gen_jobs.quality.image_preview: one row of samples per label).
"""

from gen_jobs.core.family import DemoDefaults, Family

FAMILY = Family(
    name="dcgan",
    recipe="gen_jobs.families.dcgan.recipe:Recipe",
    training="gen_jobs.families.dcgan.training:TrainingTask",
    sampler="gen_jobs.families.dcgan.sampler:Sampler",
    to_table="gen_jobs.families.dcgan.sampler:to_table",
    score_dataset="gen_jobs.quality.digits:score_dataset",
    figures="gen_jobs.quality.digits:FIGURES",
    preview="gen_jobs.quality.image_preview:preview",
    describe_epoch="gen_jobs.families.dcgan.training:describe_epoch",
    rows_from="ids",
    serve_api="serving.apis.images",
    demo=DemoDefaults(recipe="dcgan_digits", num_samples=10_000, show="grid"),
)
