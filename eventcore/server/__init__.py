"""Running servers: finding and starting a Redis process
(:mod:`~eventcore.server.process`), the embedded server the CLI runs when no
URL is set (:mod:`~eventcore.server.embedded`), and which one a command
uses (:mod:`~eventcore.server.target`); a PostgreSQL process for tests and
tooling (:mod:`~eventcore.server.postgres`)."""
