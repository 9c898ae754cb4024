"""The evaluator kinds' metrics, computed from scores the workers gathered (a leaf: it imports
nothing else of the package, so every layer may use it)."""
