"""``python -m safescale.cli``."""

from safescale.cli import main

main()
