"""The diffusers engine: real diffusion models behind the ``Engine`` interface.

Importing this package imports nothing heavy; ``registry`` needs no torch, so
the API process can read the model registry too.
"""
