"""The Python client of the coordinator's `/v1` API, for renters, suppliers and the admin.

from gpupool.client import Client
with Client("http://127.0.0.1:8420", key) as gp:
    cluster = gp.create_cluster(devices=2, kind="cpu", hours=1, max_price_per_hour="1")
"""

from gpupool.client.client import ApiError, Client
from gpupool.client.pins import CoordinatorKeyChanged, KnownCoordinators, PinError

__all__ = ["ApiError", "Client", "CoordinatorKeyChanged", "KnownCoordinators", "PinError"]
