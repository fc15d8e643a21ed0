"""Image I/O shared by the workers and the web app: decoding uploads with
their limits, encoding results (:mod:`~eventcore.images.codec`)."""
