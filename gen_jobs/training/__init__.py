"""The Ray Train face: the training loop every family shares, and its guards.

    harness     the Ray Train loop: workers, checkpoints, resume, the epoch log
    guard       a diverged step or a collapsed model rolls back to the last good epoch, or stops training
"""
