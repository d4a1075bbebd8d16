"""The Ray Data face and the dataset contract: what each row is made from and what a dataset folder holds.

    rows            row sources: ids, prompts, input images, described in the dataset's identity
    columns         a dataset's Arrow columns, laid out as HuggingFace `datasets` expects them
    images          image pixels <-> files: PNG samples, users' images decoded at a bounded cost
    gate            `raygen generate --filter`: deterministic redraws of rows that fail a figure
    manifest        `_manifest.json`, the shard list and each shard's tag: what verify checks
    shard_writer    the Ray Data actors: a family's Sampler over a shard's rows, streamed to Parquet
    run_record      the driver's record of a run: shards to write, progress, the manifest last
    shard_reads     reading many shards to check them, spread over the cluster
    output_folder   whose files are in a dataset folder, and what a run may do with them
"""
