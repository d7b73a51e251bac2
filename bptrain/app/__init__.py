"""The app: the typer commands and everything they print. The only layer that imports rich and
typer, and the one error boundary that turns a BptrainError into a message and an exit code."""
