"""Read-model stores behind one protocol."""
