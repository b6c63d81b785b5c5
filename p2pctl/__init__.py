"""p2pctl: the control CLI and client library for a running p2pd."""

from .client import Client, ClientError, DaemonNotRunning, DaemonTimeout, PermissionDenied, RequestFailed

__all__ = ["Client", "ClientError", "DaemonNotRunning", "DaemonTimeout", "PermissionDenied", "RequestFailed"]
