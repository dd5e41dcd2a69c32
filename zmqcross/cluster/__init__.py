"""Cluster processes: the manager on a machine, and the client inside each bot process."""

from ._child import ClusterClient, ClusterData, cluster_data
from .manager import ClusterManager, ClusterStatus, RestartPolicy

__all__ = ["ClusterClient", "ClusterData", "ClusterManager", "ClusterStatus", "RestartPolicy", "cluster_data"]
