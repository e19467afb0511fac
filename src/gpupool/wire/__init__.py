"""The `/v1` wire format: pydantic models shared by the coordinator, the agent and the client.

Request models forbid unknown fields and use strict numbers, so a typo or a wrong type is a
clear 422 rather than a silent default. Money travels as decimal strings ("0.25"), time as
ISO 8601 in UTC.
"""
