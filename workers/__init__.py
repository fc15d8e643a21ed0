"""Worker processes: capabilities, routing, claim/run/ack, leases, retries,
timeouts, cancel, control channel and the task handlers."""
