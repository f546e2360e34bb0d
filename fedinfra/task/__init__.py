"""The public task API (layer L2): bring any torch model and data to fedinfra.

See :mod:`fedinfra.task.api` for the contract. torch is imported lazily.
"""

from fedinfra.task.api import DataSource, Kind, Table, Task, TaskData
from fedinfra.task.loading import load_task, new_model

__all__ = ["DataSource", "Kind", "Table", "Task", "TaskData", "load_task", "new_model"]
