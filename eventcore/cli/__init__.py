"""The ``eventcore`` command line: :mod:`~eventcore.cli.main` builds the
parser from its own commands and those of the roles (workers, projections,
web); :mod:`~eventcore.cli.stack` supervises the roles under ``eventcore up``.
Nothing else imports this package."""
