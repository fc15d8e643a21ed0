"""The ``eventcore`` command line, its commands grouped by noun:
:mod:`~eventcore.cli.system` (``up``, ``redis``, ``check``, ``config``) and
:mod:`~eventcore.cli.tasks` (``submit``) here, and the command that runs
each role, with the tools that need its code, in ``workers.cli``,
``projections.cli`` and ``web.cli``. :mod:`~eventcore.cli.main` builds the
parser from them all; :mod:`~eventcore.cli.stack` supervises the roles
under ``eventcore up``. Nothing else imports this package."""
