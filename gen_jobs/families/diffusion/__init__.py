"""Diffusion images: a class-conditional U-Net denoiser (diffusers), sampled with classifier-free guidance.

    recipe.py    Recipe (U-Net, noise schedule, training data, training and sampling settings)
    model.py     ModelConfig, NoiseConfig: diffusers' UNet2DModel and its schedulers
    training.py  the denoising step and TrainingTask (run by gen_jobs.training.harness on Ray Train)
    sampler.py   Sampler: checkpoint -> images (Ray Data and Ray Serve), to_table
    pipeline.py  a diffusers pipeline folder made elsewhere as a checkpoint (U-Net or text-to-image)

It shares the DCGAN's data, rows, figures and card picture (gen_jobs.data.image_sources,
gen_jobs.data.image_rows, gen_jobs.quality.digits, gen_jobs.quality.image_preview), so the two
families' datasets of the same digits are scored alike and can be compared figure by figure.
"""

from gen_jobs.core.family import DemoDefaults, Family

FAMILY = Family(
    name="diffusion",
    recipe="gen_jobs.families.diffusion.recipe:Recipe",
    training="gen_jobs.families.diffusion.training:TrainingTask",
    sampler="gen_jobs.families.diffusion.sampler:Sampler",
    to_table="gen_jobs.families.diffusion.sampler:to_table",
    score_dataset="gen_jobs.quality.digits:score_dataset",
    figures="gen_jobs.quality.digits:FIGURES",
    preview="gen_jobs.quality.image_preview:preview",
    describe_epoch="gen_jobs.families.diffusion.training:describe_epoch",
    rows_from="ids",  # a text-to-image pipeline's recipe says "prompts" (Recipe.rows_from)
    serve_api="serving.apis.images",
    foreign_checkpoint="gen_jobs.families.diffusion.recipe:recipe_for_pipeline",
    foreign_files=("model_index.json",),
    # About 6 minutes of training on 2 CPUs: run by `raygen demo --family diffusion`, not by the 15-minute default demo.
    demo=DemoDefaults(recipe="diffusion_digits", num_samples=10_000, show="grid", in_default_run=False),
)
