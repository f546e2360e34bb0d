"""Aggregation rules (layer L3): streaming FedAvg; secure variants wrap it."""

from fedinfra.aggregation.fedavg import StreamingFedAvg
from fedinfra.aggregation.records import array_view, arrays_from_record

__all__ = ["StreamingFedAvg", "array_view", "arrays_from_record"]
