"""What the token-sequence families (gpt, music) share.

    config      the recipe sections they share: the decoder's shape, LM training
    training    training a causal language model on token blocks, on Ray Train
    decoding    batched autoregressive decoding with per-row noise
"""
