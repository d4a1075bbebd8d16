"""What the token-sequence families (gpt, music) share.

    training    training a causal language model on token blocks, on Ray Train
    decoding    batched autoregressive decoding with per-row noise
"""
