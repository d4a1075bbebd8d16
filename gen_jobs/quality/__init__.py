"""Quality: the figures every family shares, when one is worth a warning, and the dataset card.

    scoring         a dataset's figures: the family's own, duplicates, copies of the training data
    significance    a warning only when a figure is unlikely to be chance for the rows it rests on
    duplicates      exact and near copies within a dataset
    memorisation    runs of words or tokens copied verbatim from a training corpus
    figures         pictures read without a legend: piano rolls, image grids with titles
    image_figures   generated images against real ones, in a fixed random conv net's features
    card            the dataset card: quality.json, a HuggingFace README.md and its pictures
"""
