"""The engine: gates, the graph that runs them forward and backward, and the gradient-check
algorithm. It imports NumPy and nothing else of bptrain's."""
