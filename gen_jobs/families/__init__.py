"""Model families: one package each (dcgan, gpt, music, style), plus `lm`, the parts gpt and music share.

A family's `__init__` declares `FAMILY` (gen_jobs.core.family.Family); the
registry (gen_jobs.core.registry) names the families.
"""
