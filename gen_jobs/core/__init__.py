"""The core every face uses; it reaches a family only through the registry.

    errors      the one exception type a user sees as a one-line message
    storage     local paths and s3:// URIs behind one set of functions
    console     what a person sees: raygen's lines and progress, Ray's internals kept in its logs
    cluster     joining Ray: the same command on a laptop and on a cluster
    family      the family contract: what a model family declares once
    registry    the families, one line each, loaded by name on first use
    recipes     one pydantic recipe from a YAML file plus --set overrides
    checkpoint  a folder (local path or s3:// URI) that rebuilds a model on its own
    lease       one live run per dataset folder
    row_seed    row i's seed, a pure function of (base seed, i)
    seeding     each row's noise, from a counter-based generator keyed by its seed
    smoke       RAYGEN_SMOKE_TEST=1: every job scaled down to seconds
"""
