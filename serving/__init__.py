"""raygen's Ray Serve face: online sampling with the families' own samplers.

Not built yet (issue "Ray Serve: online sampling"); the package exists so the
distribution's layout is final. Importing it starts nothing.
"""
