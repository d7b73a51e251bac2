"""What is trained: the config schema, the data, the model built from both, the optimizers.
Imports the engine, never the layers above."""
