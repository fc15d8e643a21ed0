"""Projection processes: pure folds of the log into views, the runner that
applies them, and the replay / rebuild / verify tools."""
