"""One module per deployment condition."""
