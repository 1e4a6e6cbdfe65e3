"""``python -m safescale.cli``.

``python -m`` puts the current directory first on ``sys.path``; it is taken off again
here, so that a ``faiss.py`` or ``pandas.py`` in the folder a command runs from is never
imported in place of the installed package (the commands import their heavy
dependencies lazily, after this line). ``python -P -m safescale.cli`` (or the
``safescale`` console script) never adds it at all.
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from safescale.cli import main

main()
