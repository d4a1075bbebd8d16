"""Neural style transfer: one feed-forward network holding several styles (conditional instance norm).

    recipe.py    Recipe (styles, transformer and loss-network sizes, loss weights, data, training, limits)
    model.py     TransformerNet, the loss networks (fixed-seed random multi-scale, or VGG-19 weights)
    losses.py    content, style (Gram) and total-variation losses, each layer normalised
    data.py      bundled style and content photos, users' images, random training crops
    training.py  TrainingTask (run by gen_jobs.training.harness on Ray Train)
    sampler.py   Sampler: checkpoint + input images -> stylised images (Ray Data and Ray Serve), to_table
    quality.py   per-image figures (change, edges kept, colour shift, palette) and the dataset's
    examples.py  the before/after grid of the demo and the dataset card
"""

from gen_jobs.core.family import DemoDefaults, Family, GenerateOption

FAMILY = Family(
    name="style",
    recipe="gen_jobs.families.style.recipe:Recipe",
    training="gen_jobs.families.style.training:TrainingTask",
    sampler="gen_jobs.families.style.sampler:Sampler",
    to_table="gen_jobs.families.style.sampler:to_table",
    score_dataset="gen_jobs.families.style.quality:score_dataset",
    figures="gen_jobs.families.style.quality:FIGURES",
    preview="gen_jobs.families.style.examples:preview",
    describe_epoch="gen_jobs.families.style.training:describe_epoch",
    rows_from="images",  # --input: a folder, Parquet or s3:// prefix of images
    serve_api="serving.apis.edits",
    demo=DemoDefaults(recipe="style_sample", num_samples=32, show="files",
                      input="gen_jobs.families.style.data:write_demo_inputs",
                      examples="gen_jobs.families.style.examples:write_examples"),
    generate_options=(
        GenerateOption("styles", "'uniform' (drawn per row) or style indices K[,K...] cycled by row id "
                       "(style's name for --labels)", same_as="labels", metavar="uniform|K[,K...]"),
        GenerateOption("image_column", "the input Parquet's image column (style's name for --input-column)",
                       same_as="input_column", metavar="COL"),
    ),
)
