"""How it is trained and stored: the loop, the run directory, diagnostics, sanity checks,
sweeps. Imports the engine and net; tells the console through a reporter object."""
