"""eventcore: an event-sourced task system on Redis Streams."""
