"""What is on disk or in a registry (no HTTP, no loading): names, Modelfiles, the store, recipes,
create, and the registry client."""
