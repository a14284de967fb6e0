"""spark-submit's primary file for the clipsift images: ``spark-submit [spark options] submit.py COMMAND [options]``.

spark-submit needs a ``.py`` file, not a console script; this one runs the same ``jobs.cli.main`` as the
``clipsift`` command. It lives outside the ``jobs`` package on purpose: running ``jobs/cli.py`` as a script
would put ``jobs/`` first on ``sys.path``, where ``jobs/select.py`` shadows the standard library's ``select``.
"""

import sys

from jobs.cli import main

sys.exit(main())
