"""Projections: pure folds of the log into views, the runner that applies
them, and the replay / rebuild / verify tools.

The folds and views are here; the runner, the read API, the feed and the
replay commands build on them.
"""

from projections.folds import fold_node, fold_node_task, fold_queue, fold_task
from projections.replay import Views, replay
from projections.stats import fold_stats
from projections.views import HistoryItem, NodeView, QueueView, StatsView, TaskView

__all__ = [
    "HistoryItem",
    "NodeView",
    "QueueView",
    "StatsView",
    "TaskView",
    "Views",
    "fold_node",
    "fold_node_task",
    "fold_queue",
    "fold_stats",
    "fold_task",
    "replay",
]
