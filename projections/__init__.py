"""Projections: pure folds of the log into views, the runner that applies
them, and the replay / rebuild / verify tools.

Here: the views and their pure folds, the projector that applies them, the
view store, the read API (lists with cursors, read-your-writes), and the
tools behind ``eventcore events`` and ``eventcore replay verify``.
"""

from projections.folds import fold_queue, fold_task
from projections.nodes import fold_node, fold_node_task
from projections.read import TaskFilter, TaskPage, caught_up, list_tasks, wait_for
from projections.replay import Views, replay
from projections.runner import Projector
from projections.stats import fold_stats
from projections.store import ViewStore
from projections.views import HistoryItem, NodeView, QueueView, StatsView, TaskView

__all__ = [
    "HistoryItem",
    "NodeView",
    "Projector",
    "QueueView",
    "StatsView",
    "TaskFilter",
    "TaskPage",
    "TaskView",
    "ViewStore",
    "Views",
    "caught_up",
    "fold_node",
    "fold_node_task",
    "fold_queue",
    "fold_stats",
    "fold_task",
    "list_tasks",
    "replay",
    "wait_for",
]
