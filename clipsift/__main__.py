"""``python -m clipsift COMMAND [options]``, and spark-submit's primary file.

spark-submit needs a ``.py`` file, not a console script::

    main=$(python -c 'import clipsift.__main__ as m; print(m.__file__)')
    spark-submit [spark options] "$main" score --config score.yaml

runs the same :func:`clipsift.jobs.cli.main` as the ``clipsift`` command. The file's folder goes first on
``sys.path``; it holds only clipsift's own ``jobs`` and ``udfs`` folders, which shadow no standard-library
module (``jobs/select.py`` would, were ``jobs/`` itself first on the path).
"""

import sys

from clipsift.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
