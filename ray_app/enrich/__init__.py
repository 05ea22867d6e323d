"""Enrichment: a CRM/context table joined to profiles by user id or account id.

The join happens when a profile is read, not when events are applied, so the stream state stays
a pure function of the events. The table and its reloading are in :mod:`ray_app.enrich.crm`.
"""

from ray_app.enrich.crm import DEFAULTS, CrmTable, write_demo_crm

__all__ = ["DEFAULTS", "CrmTable", "write_demo_crm"]
