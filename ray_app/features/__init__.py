"""Features: a profile, its CRM enrichment and the request context -> one fixed-size vector.

One code path for serving, online learning and offline training: all of them call
:meth:`FeatureSchema.featurize` (or :meth:`FeatureSchema.featurize_many`). The vector has two
parts: **onboarding features**, named from the catalog's steps
(:mod:`~ray_app.features.featurize`), and **hashed attributes**: traits, CRM columns, context
fields and crosses of trait pairs hashed into a fixed number of buckets
(:mod:`~ray_app.features.hashing`, configured by :class:`Hashing`). The layout and its hash live
in :mod:`~ray_app.features.schema`, value coercions in :mod:`~ray_app.features.values`. A growing
vocabulary never changes the layout, and every value is finite whatever the input.

>>> from ray_app.catalog import load_catalog
>>> schema = FeatureSchema.from_catalog(load_catalog())
>>> x = schema.featurize(None, None, {"device": "mobile"}, now_ms=0)
>>> x.dtype, x.shape == (schema.dim,), float(x[schema.index("cold")])
(dtype('float32'), True, 1.0)
>>> float(x[schema.bucket("x:device=mobile")]), len(schema.hash)
(1.0, 16)
>>> p = {"traits": {"jobFunction": "Nurse", "seats": 3, "email": "a@b.c"}}
>>> schema.tokens(p, None, None)[:3], len(schema.tokens(p, None, None))
(['t:jobFunction=nurse', 't:seats=~0', 't:seats=^0'], 17)
>>> p = {"stepsCompleted": ["welcome"], "steps": {"welcome": {"completions": 1, "timeMs": "oops"}}}
>>> float(schema.featurize(p, None, None, now_ms=0)[schema.index("step:welcome:completed")])
1.0
"""

from ray_app.features.featurize import EVENT_COUNTS
from ray_app.features.hashing import DEFAULT_HASHING, Hashing
from ray_app.features.schema import FEATURE_VERSION, FeatureSchema

__all__ = [
    "DEFAULT_HASHING",
    "EVENT_COUNTS",
    "FEATURE_VERSION",
    "FeatureSchema",
    "Hashing",
]
