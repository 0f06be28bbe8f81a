"""Built-in weighting strategies, one module each; importing a module registers it."""
