"""DCGAN images: a class-conditional DCGAN with the stabilisers small data needs.

    recipe.py    Recipe (model, data, training settings)
    model.py     Generator, Discriminator
    training.py  the GAN step and TrainingTask (run by gen_jobs.training.harness on Ray Train)
    sampler.py   Sampler: checkpoint -> images (Ray Data and Ray Serve), to_table
    data.py      training images: scikit-learn digits, image folders, Parquet (local or s3://)
    quality.py   digits figures: classes covered, diversity, label agreement, TSTR, PRDC, Fréchet (random conv)
    preview.py   the dataset card's picture: a grid of samples, one row per label
"""

from gen_jobs.core.family import DemoDefaults, Family

FAMILY = Family(
    name="dcgan",
    recipe="gen_jobs.families.dcgan.recipe:Recipe",
    training="gen_jobs.families.dcgan.training:TrainingTask",
    sampler="gen_jobs.families.dcgan.sampler:Sampler",
    to_table="gen_jobs.families.dcgan.sampler:to_table",
    score_dataset="gen_jobs.families.dcgan.quality:score_dataset",
    figures="gen_jobs.families.dcgan.quality:FIGURES",
    preview="gen_jobs.families.dcgan.preview:preview",
    describe_epoch="gen_jobs.families.dcgan.training:describe_epoch",
    rows_from="ids",
    serve_api="serving.apis.images",
    demo=DemoDefaults(recipe="dcgan_digits", num_samples=10_000, show="grid"),
)
