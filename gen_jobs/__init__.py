"""raygen's jobs: train generative models, generate sharded datasets, verify them.

Run `raygen --help` for the commands. Importing this package starts nothing.
"""

__version__ = "0.1.0"
