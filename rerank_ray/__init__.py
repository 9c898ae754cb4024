"""rerank-ray: fine-tune sentence-transformers cross-encoders on Ray.

Importing the package does no work: no Ray, no torch, no folders. Entry points are the
``rerank-ray`` command (:mod:`rerank_ray.cli`) and :func:`rerank_ray.run.driver.train`.
"""

__version__ = "0.1.0"
