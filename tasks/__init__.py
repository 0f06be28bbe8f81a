"""Built-in task pairs, one module each; importing a module registers it."""
