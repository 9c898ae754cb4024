"""One module per command of ``rerank-ray``: its options, declared once, and what it runs.
:mod:`rerank_ray.cli` parses the command line and hands each its arguments."""
