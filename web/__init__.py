"""The HTTP API: submit, query, cancel, results, SSE feeds, the IOPaint facade."""
