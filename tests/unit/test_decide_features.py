"""Features: layout, hash, what each group encodes, determinism, and no NaN whatever comes in."""

from __future__ import annotations

import dataclasses
import pickle
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.catalog import load_catalog
from ray_app.enrich import DEFAULTS
from ray_app.features import FEATURE_VERSION, FeatureSchema, Hashing
from ray_app.sim.population import STEPS
from ray_app.state.event import Event
from ray_app.state.profile import Profile, apply

CATALOG = load_catalog()
SCHEMA = FeatureSchema.from_catalog(CATALOG)
MIN = 60_000
#: The largest value of a feature: a cross's (every other feature is at most 1).
MAX = SCHEMA.hashing.cross_weight


def value(x: np.ndarray, name: str) -> float:
    return float(x[SCHEMA.index(name)])


def group(x: np.ndarray, prefix: str) -> dict[str, float]:
    return {n: float(x[i]) for i, n in enumerate(SCHEMA.names) if n.startswith(prefix) and x[i]}


def hashed(x: np.ndarray) -> set[int]:
    """The positions of the hashed features that are on."""
    return {i for i in np.flatnonzero(x) if SCHEMA.names[i].startswith("hash:")}


def hashed_of(schema: FeatureSchema, x: np.ndarray) -> set[int]:
    return {i for i in np.flatnonzero(x) if schema.names[i].startswith("hash:")}


def buckets(*tokens: str) -> set[int]:
    return {SCHEMA.bucket(t) for t in tokens}


def thermometer(token: str, low: int, high: int, cross: str = "") -> list[str]:
    """A number's threshold tokens ``^low`` ... ``^high``, each crossed with ``cross`` if given."""
    return [f"{token}=^{k}" + (f"&{cross}" if cross else "") for k in range(low, high + 1)]


def real_profile() -> dict:
    p = Profile("u1")
    events = [
        Event("i", "u1", "identify", None, 0, 0, user_id="u1",
              traits={"role": "Engineer", "segment": "developer", "companySize": "11-50",
                      "referral": "carrier_pigeon"}),
        Event("v1", "u1", "track", "Step Viewed", 1000, 1000, step_id="welcome"),
        Event("c1", "u1", "track", "Step Completed", 7000, 7000, step_id="welcome",
              properties={"durationMs": 6000}),
        Event("v2", "u1", "track", "Step Viewed", 8000, 8000, step_id="role"),
        Event("e2", "u1", "track", "Form Error", 9000, 9000, step_id="role"),
        Event("v3", "u1", "track", "Step Viewed", 10 * MIN, 10 * MIN, step_id="role"),
    ]  # fmt: skip
    for e in events:
        apply(p, e)
    return p.as_dict()


# ------------------------------------------------------------------------------------- layout


def test_names_dim_and_hash():
    assert SCHEMA.dim == len(SCHEMA.names) == len(set(SCHEMA.names))
    assert SCHEMA.names[:3] == ("cold", "onboarding_completed", "progress")
    assert len(SCHEMA.hash) == 16 and int(SCHEMA.hash, 16) >= 0
    assert FeatureSchema.from_catalog(load_catalog()).hash == SCHEMA.hash
    assert FeatureSchema(STEPS).hash == SCHEMA.hash and FeatureSchema(STEPS) == SCHEMA
    for s in STEPS:
        assert f"step:{s}:completed" in SCHEMA.names and f"current_step:{s}" in SCHEMA.names
    assert sum(n.startswith("hash:") for n in SCHEMA.names) == SCHEMA.hashing.buckets == 2048


def test_hash_changes_with_steps_hashing_and_version():
    hashes = {
        SCHEMA.hash,
        FeatureSchema(STEPS[:-1]).hash,
        FeatureSchema(STEPS, Hashing(buckets=256)).hash,
        FeatureSchema(STEPS, Hashing(exclude=frozenset({"plan"}))).hash,
        FeatureSchema(STEPS, version=FEATURE_VERSION + 1).hash,
    }
    assert len(hashes) == 5


def test_a_hash_seed_is_another_draw_of_the_collisions_and_seed_0_is_the_plain_crc():
    # seed 0: the schema hash and the buckets of every release before the seed existed
    assert Hashing(hash_seed=0) == Hashing() and "hash_seed" not in SCHEMA.hashing.as_dict()
    assert SCHEMA.hash == FeatureSchema(STEPS, Hashing(hash_seed=0)).hash
    start = SCHEMA.names.index("hash:0")
    assert SCHEMA.bucket("t:role=admin") == start + zlib.crc32(b"t:role=admin") % 2048
    seeded = FeatureSchema(STEPS, Hashing(hash_seed=12345))
    assert seeded.hash != SCHEMA.hash and seeded.dim == SCHEMA.dim
    assert pickle.loads(pickle.dumps(seeded)) == seeded and pickle.loads(
        pickle.dumps(seeded)).hash == seeded.hash  # fmt: skip
    profile = {"traits": {"role": "admin", "seats": 40, "plan": "pro"}}
    tokens = seeded.tokens(profile)
    # the seed moves the singles and the crosses alike (the crosses' CRC runs on from a&)
    assert hashed_of(seeded, seeded.featurize(profile)) == {seeded.bucket(t) for t in tokens}
    moved = sum(seeded.bucket(t) != SCHEMA.bucket(t) for t in tokens)
    assert moved >= len(tokens) - 2, (moved, len(tokens))
    for bad in (-1, 1 << 32, 1.5, True, "1"):
        with pytest.raises(ValueError, match=r"features\.hash_seed must be an integer"):
            Hashing(hash_seed=bad)


def test_a_numbers_thresholds_and_their_crosses_weigh_the_threshold_weight():
    profile = {"traits": {"role": "admin", "seats": 40}}
    tokens = SCHEMA.tokens(profile)
    thresholds = {t for t in tokens if "=^" in t}  # seats' thermometer, alone and x role
    assert len(thresholds) == 2 * len(thermometer("t:seats", 6, 21)) == 32
    # by default a number's thresholds are worth what any other token is
    assert SCHEMA.hashing.threshold_weight == 1.0 and "threshold_weight" not in (
        SCHEMA.hashing.as_dict()
    )
    # with crosses worth 1, the schema hash's input about hashing is that of the releases
    # before either weight existed
    flat = Hashing(cross_weight=1)
    assert sorted(flat.as_dict()) == sorted(
        ["buckets", "include", "exclude", "numeric", "categorical", "crosses", "cross_fields"]
    )
    x = FeatureSchema(STEPS, flat).featurize(profile)
    assert {float(x[i]) for i in hashed(x)} == {1.0}
    half = FeatureSchema(STEPS, Hashing(threshold_weight=0.5, cross_weight=1))
    assert half.hash != SCHEMA.hash and half.hashing.as_dict()["threshold_weight"] == 0.5
    assert pickle.loads(pickle.dumps(half)).hashing.threshold_weight == 0.5
    xh = half.featurize(profile)
    ones = {half.bucket(t) for t in tokens if t not in thresholds}
    assert ones and {float(xh[i]) for i in ones} == {1.0}
    # a bucket shared with a single token worth 1 is worth 1; the others weigh the weight
    singles = {half.bucket(t) for t in tokens if "&" not in t and t not in thresholds}
    weighed = {half.bucket(t) for t in thresholds} - ones
    assert weighed and {float(xh[i]) for i in weighed - singles} == {0.5}
    assert hashed_of(half, xh) == ones | weighed == hashed(x)  # the same buckets, same layout
    # no number, nothing weighed: the vector of a categorical profile is the same
    plain = {"traits": {"role": "admin", "plan": "pro"}}
    assert np.array_equal(FeatureSchema(STEPS, flat).featurize(plain), half.featurize(plain))
    rows = half.featurize_many([profile, plain])
    assert np.array_equal(rows[0], xh)  # the batch path weighs them too
    for bad in (0, -0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"features\.threshold_weight must be a number"):
            Hashing(threshold_weight=bad)


def test_a_cross_of_two_traits_weighs_the_cross_weight():
    profile = {"traits": {"role": "admin", "plan": "pro", "seats": 40}}
    tokens = SCHEMA.tokens(profile)
    crosses = {SCHEMA.bucket(t) for t in tokens if "&" in t}
    singles = {SCHEMA.bucket(t) for t in tokens if "&" not in t}
    assert len(crosses) > 20 and len(singles) > 15
    # by default each cross is worth 2 and every single token 1; a bucket that a cross shares
    # with a single token is worth the single token's 1
    assert SCHEMA.hashing.cross_weight == 2.0 and SCHEMA.hashing.as_dict()["cross_weight"] == 2.0
    x = SCHEMA.featurize(profile)
    assert {float(x[i]) for i in singles} == {1.0}
    assert {float(x[i]) for i in crosses - singles} == {2.0}
    assert hashed(x) == crosses | singles
    assert np.array_equal(SCHEMA.featurize_many([profile, None])[0], x)  # the batch path too
    # the weight is part of the schema hash: a model fitted to crosses worth 1 is another schema
    flat = FeatureSchema(STEPS, Hashing(cross_weight=1))
    assert flat.hash != SCHEMA.hash and flat.dim == SCHEMA.dim
    assert hashed_of(flat, flat.featurize(profile)) == hashed(x)  # the same buckets
    # a cross with a number's threshold weighs both weights
    both = FeatureSchema(STEPS, Hashing(threshold_weight=0.5, cross_weight=3))
    assert pickle.loads(pickle.dumps(both)).hashing.cross_weight == 3.0
    xb = both.featurize(profile)
    role_x_seats = {both.bucket(t) for t in tokens if "&" in t and "=^" in t and "role" in t}
    role_x_plan = both.bucket("t:plan=pro&t:role=admin")
    taken = {both.bucket(t) for t in tokens if t.count("^") == 0 or "&" not in t}
    assert {float(xb[i]) for i in role_x_seats - taken} == {1.5}
    assert role_x_plan not in {both.bucket(t) for t in tokens if "&" not in t}
    assert float(xb[role_x_plan]) == 3.0
    for bad in (0.5, 0, 9, float("inf"), float("nan"), True, "2"):
        with pytest.raises(ValueError, match=r"features\.cross_weight must be a number"):
            Hashing(cross_weight=bad)


@pytest.mark.parametrize("tw, cw", [(1.0, 2.0), (0.5, 3.0), (0.5, 1.0)])
def test_a_shared_bucket_takes_a_single_tokens_value_over_a_crosss_whatever_the_order(tw, cw):
    # 16 buckets for ~100 tokens: nearly every bucket is shared
    schema = FeatureSchema(STEPS, Hashing(buckets=16, threshold_weight=tw, cross_weight=cw))
    traits = {"role": "admin", "plan": "pro", "seats": 40, "region": "emea"}
    context = {"device": "tablet", "visits": 300}
    profile = {"traits": traits}
    # precedence: a single token without a threshold, a threshold, a cross, a cross with one
    rank = {(False, False): (3, 1.0), (False, True): (2, tw), (True, False): (1, cw),
            (True, True): (0, cw * tw)}  # fmt: skip
    best: dict[int, tuple[int, float]] = {}
    for t in schema.tokens(profile, None, context):
        r = rank[("&" in t, "=^" in t)]
        b = schema.bucket(t)
        best[b] = max(best.get(b, r), r)
    x = schema.featurize(profile, None, context)
    assert {i: float(x[i]) for i in hashed_of(schema, x)} == {b: v for b, (_, v) in best.items()}
    assert len({r for r, _ in best.values()}) >= 3  # the collisions put several kinds to the test
    # the order in which the traits come does not matter
    again = {"traits": dict(reversed(list(traits.items())))}
    assert np.array_equal(schema.featurize(again, None, dict(reversed(list(context.items())))), x)
    assert np.array_equal(schema.featurize_many([profile], None, [context])[0], x)


def test_a_growing_vocabulary_never_changes_the_layout():
    before = (SCHEMA.dim, SCHEMA.hash)
    # values and keys never seen before land in their buckets; the layout stays
    x = SCHEMA.featurize({"traits": {"clinicType": "veterinary", "beds": 12}}, None, None)
    assert hashed(x) == buckets(
        "t:clinicType=veterinary", "t:beds=~1", "t:beds=~1&t:clinicType=veterinary",
        *thermometer("t:beds", 0, 14), *thermometer("t:beds", 0, 14, "t:clinicType=veterinary"),
    )  # fmt: skip
    assert (SCHEMA.dim, SCHEMA.hash) == before
    again = FeatureSchema.from_catalog(load_catalog())
    assert again.bucket("t:clinicType=veterinary") == SCHEMA.bucket("t:clinicType=veterinary")


def test_a_preference_that_changes_at_any_size_is_learnable_from_a_number():
    # a linear model on a number's tokens (what the wide part is) represents a step at any of the
    # thermometer's thresholds exactly, and a step elsewhere but for the values between the two
    # thresholds around it; one log2 bucket per number could not tell 4 from 5
    values = np.arange(1, 20_000)
    rows = [SCHEMA.tokens({"traits": {"seats": int(v)}}) for v in values]
    vocabulary = sorted({t for r in rows for t in r})
    x = np.zeros((len(values), len(vocabulary) + 1))
    x[:, -1] = 1.0
    at = {t: i for i, t in enumerate(vocabulary)}
    for i, r in enumerate(rows):
        x[i, [at[t] for t in r]] = 1.0

    def misfit(step: float) -> list[int]:
        y = (values >= step).astype(float)
        w = np.linalg.lstsq(x, y, rcond=None)[0]
        return [int(v) for v in values[np.abs(x @ w - y) > 0.25]]

    assert misfit(5) == [] and misfit(2 ** (33 / 4)) == [] and misfit(1_000) == []
    assert set(misfit(25)) <= set(range(23, 27))  # 2**(18/4) = 22.6 and 2**(19/4) = 26.9
    assert set(misfit(150)) <= set(range(129, 153))


def test_identifiers_and_personal_data_are_left_out_and_the_catalog_can_type_keys():
    traits = {"email": "a@b.co", "firstName": "Ada", "accountId": "acct-9", "createdAt": "2026",
              "bio": "x" * 65, "site": "https://a.b", "plan": "Pro", "zip": 10115}  # fmt: skip
    assert SCHEMA.tokens({"traits": traits}) == [
        "t:plan=pro", "t:zip=~4", *thermometer("t:zip", 38, 53),
        *sorted(["t:plan=pro&t:zip=~4", *[f"t:plan=pro&{t}" for t in thermometer("t:zip", 38, 53)]]),
    ]  # fmt: skip
    typed = FeatureSchema(
        STEPS, Hashing(categorical=frozenset({"zip"}), numeric=frozenset({"seats"}),
                       exclude=frozenset({"plan"}), crosses=False)
    )  # fmt: skip
    assert typed.tokens({"traits": {**traits, "seats": "40"}}) == [
        "t:zip=10115", "t:seats=~1", *thermometer("t:seats", 6, 21),
    ]  # fmt: skip
    only = FeatureSchema(STEPS, Hashing(include=frozenset({"Plan", "company.tier"})))
    assert only.tokens({"traits": {**traits, "company": {"tier": "Gold", "size": 3}}}) == [
        "t:plan=pro",
        "t:company.tier=gold",
        "t:company.tier=gold&t:plan=pro",
    ]


def test_two_trait_preferences_have_their_own_feature():
    """A cross of two traits is on only for that combination: a linear head can learn a
    preference of (role, size) that neither trait predicts alone."""
    cells = [{"role": r, "size": z} for r in ("a", "b") for z in ("s", "l")]
    crosses = [{SCHEMA.names[i] for i in hashed(SCHEMA.featurize({"traits": c}))} for c in cells]
    own = [c - set().union(*(o for o in crosses if o is not c)) for c in crosses]
    assert all(own), "every (role, size) cell has a feature no other cell has"


# ----------------------------------------------------------------------------------- contents


def test_cold_start_vector():
    x = SCHEMA.featurize(None, None, None, now_ms=123)
    assert x.dtype == np.float32 and x.shape == (SCHEMA.dim,)
    assert SCHEMA.describe(x) == {"cold": 1.0}
    assert SCHEMA.describe(SCHEMA.featurize({}, None, None)) == {"cold": 1.0}
    x = SCHEMA.featurize(None, {"found": False, "by": None, **DEFAULTS}, {"device": "mobile"})
    assert SCHEMA.describe(x) == {"cold": 1.0, SCHEMA.names[SCHEMA.bucket("x:device=mobile")]: 1.0}


def test_a_real_profile():
    prof = real_profile()
    x = SCHEMA.featurize(prof, None, None, now_ms=10 * MIN + 30_000)
    assert value(x, "cold") == 0.0
    assert value(x, "step:welcome:completed") == 1.0 and value(x, "step:role:completed") == 0.0
    assert value(x, "step:role:seen") == 1.0 and value(x, "step:goals:seen") == 0.0
    assert 0 < value(x, "step:role:form_errors") < 1 and value(x, "step:welcome:form_errors") == 0
    assert 0 < value(x, "step:welcome:time") < 1
    assert value(x, "progress") == pytest.approx(1 / 7)
    assert group(x, "current_step:") == {"current_step:role": 1.0}
    tokens = SCHEMA.tokens(prof)
    assert "t:role=engineer" in tokens  # case-insensitive
    assert "t:referral=carrier_pigeon" in tokens and "t:companySize=11-50&t:role=engineer" in tokens
    assert hashed(x) == buckets(*tokens)
    assert value(x, "count:track:Step Viewed") > value(x, "count:track:Form Error") > 0
    assert value(x, "count:page") == 0.0
    assert 0 < value(x, "recency") < value(x, "age") < 1
    assert 0 < value(x, "activity:last60m") and value(x, "sessions") > 0


def test_enrichment_and_context():
    found = {"found": True, "by": "accountId", "plan": "Enterprise", "industry": "mining",
             "employees": 1200, "region": "unknown"}  # fmt: skip
    x = SCHEMA.featurize(None, found, {"device": "tablet", "referrer": "Google"})
    assert value(x, "crm:found") == 1.0
    assert set(SCHEMA.tokens(None, found, {"device": "tablet", "referrer": "Google"})) == {
        "c:plan=enterprise", "c:industry=mining", "c:employees=~3",
        *thermometer("c:employees", 25, 40),
        *thermometer("c:employees", 25, 40, "c:industry=mining"),
        *thermometer("c:employees", 25, 40, "c:plan=enterprise"),
        "c:employees=~3&c:industry=mining", "c:employees=~3&c:plan=enterprise",  # not "unknown"
        "c:industry=mining&c:plan=enterprise", "x:device=tablet", "x:referrer=google",
    }  # fmt: skip
    assert hashed(x) == buckets(
        *SCHEMA.tokens(None, found, {"device": "tablet", "referrer": "Google"})
    )
    # a CRM miss carries defaults, not the user's data: no tokens
    assert SCHEMA.tokens(None, {"found": False, "by": None, **DEFAULTS}, None) == []


def test_recency_is_clipped():
    prof = {"lastSeen": 10_000, "firstSeen": 0, "counts": {"track": 1}}
    assert value(SCHEMA.featurize(prof, now_ms=0), "recency") == 0.0  # seen "in the future"
    assert value(SCHEMA.featurize(prof, now_ms=10**15), "recency") == 1.0
    assert value(SCHEMA.featurize(prof, now_ms=10_000 + MIN), "recency") > 0


def test_deterministic_and_featurize_many_is_the_same_code_path():
    prof = real_profile()
    rows = [(prof, {"plan": "team"}, {"device": "mobile"}, 10 * MIN), (None, None, None, 0)]
    one = [SCHEMA.featurize(*r) for r in rows]
    assert np.array_equal(one[0], SCHEMA.featurize(*rows[0]))
    many = SCHEMA.featurize_many(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    )
    assert many.dtype == np.float32 and np.array_equal(many, np.stack(one))
    assert SCHEMA.featurize_many([]).shape == (0, SCHEMA.dim)
    with pytest.raises(ValueError, match="enrichments: 1 rows for 2 profiles"):
        SCHEMA.featurize_many([None, None], enrichments=[None])
    with pytest.raises(ValueError, match="now_ms"):
        SCHEMA.featurize_many([None], now_ms=[1, 2])


def test_schema_survives_pickle():
    again = pickle.loads(pickle.dumps(SCHEMA))
    assert again == SCHEMA and again.hash == SCHEMA.hash and again.names == SCHEMA.names
    prof = real_profile()
    assert np.array_equal(
        again.featurize(prof, None, None, 5), SCHEMA.featurize(prof, None, None, 5)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        SCHEMA.steps = ()  # type: ignore[misc]


# ------------------------------------------------------------------------ property: never NaN

WEIRD = st.sampled_from(
    [float("nan"), float("inf"), float("-inf"), -1.0, -(10**400), 10**400, "nan", "1e999", "", True]
)
ANY = st.recursive(
    WEIRD
    | st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["nan", "inf", "-1e999", "1e400", "12", "welcome", "unknown"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
STEP_KEYS = st.sampled_from([*STEPS, "other_step"])
STEP_STATS = (
    st.fixed_dictionaries(
        {},
        optional={
            k: ANY for k in ("views", "completions", "abandons", "formErrors", "retries", "timeMs")
        },
    )
    | ANY
)
PROFILE = (
    st.fixed_dictionaries(
        {},
        optional={
            "stepsCompleted": st.lists(STEP_KEYS | ANY, max_size=8) | ANY,
            "steps": st.dictionaries(STEP_KEYS, STEP_STATS, max_size=8) | ANY,
            "counts": st.dictionaries(st.sampled_from(["track", "page", "track:Form Error"]), ANY)
            | ANY,
            "currentStep": STEP_KEYS | ANY,
            "traits": st.dictionaries(st.sampled_from(["role", "segment", "companySize"]), ANY)
            | ANY,
            "lastSeen": ANY,
            "firstSeen": ANY,
            "completedAt": ANY,
            "formErrors": ANY,
            "retries": ANY,
            "sessions": st.fixed_dictionaries({"count": ANY}) | ANY,
            "activity": st.fixed_dictionaries({"last5m": ANY, "last60m": ANY}) | ANY,
        },
    )
    | ANY
)
ENRICHMENT = (
    st.fixed_dictionaries(
        {},
        optional={k: ANY for k in ("found", "plan", "industry", "employees", "region")},
    )
    | ANY
)
CONTEXT = st.fixed_dictionaries({}, optional={"device": ANY, "referrer": ANY}) | ANY


@pytest.mark.parametrize(
    "odd", [float("nan"), float("inf"), float("-inf"), -5, 10**400, "nan", "-inf", "12", None, [1]]
)
def test_odd_values_in_every_field(odd):
    stats = dict.fromkeys(
        ("views", "completions", "abandons", "formErrors", "retries", "timeMs"), odd
    )
    profile = {
        "stepsCompleted": [odd, "welcome"],
        "steps": {s: stats for s in STEPS},
        "counts": dict.fromkeys(("track", "page", "track:Form Error"), odd),
        "currentStep": odd,
        "traits": dict.fromkeys(("role", "segment", "companySize", "referral"), odd),
        **dict.fromkeys(("lastSeen", "firstSeen", "completedAt", "formErrors", "retries"), odd),
        "sessions": {"count": odd},
        "activity": {"last5m": odd, "last60m": odd},
    }
    enrichment = dict.fromkeys(("found", "plan", "industry", "employees", "region"), odd)
    for now in (odd, 0, 10**13):
        x = SCHEMA.featurize(profile, enrichment, {"device": odd, "referrer": odd}, now)
        assert np.isfinite(x).all() and ((x >= 0) & (x <= MAX)).all(), SCHEMA.describe(x)


@settings(max_examples=300, deadline=None)
@given(PROFILE, ENRICHMENT, CONTEXT, ANY)
def test_never_nan_whatever_the_input(profile, enrichment, context, now):
    x = SCHEMA.featurize(profile, enrichment, context, now)
    assert x.dtype == np.float32 and x.shape == (SCHEMA.dim,)
    assert np.isfinite(x).all()
    assert ((x >= 0) & (x <= MAX)).all()
    assert np.array_equal(x, SCHEMA.featurize(profile, enrichment, context, now))


def test_the_hashing_memories_answer_as_the_functions_do_and_stay_bounded(monkeypatch):
    from ray_app.features import hashing

    h = Hashing(exclude=frozenset({"plan"}))
    tokens = [f"t:role=r{i}" for i in range(50)]
    assert h.token_buckets(tokens) == [hashing.bucket(t, h.buckets) for t in tokens]
    assert h.token_buckets(tokens) == h.token_buckets(tokens)  # from memory: the same
    keys = ["role", "plan", "accountId", "company.plan", "company.size", "email"]
    fresh = Hashing(exclude=frozenset({"plan"}))
    assert [h.keeps(k) for k in keys] == [fresh._keeps_now(k) for k in keys]
    assert [h.keeps(k) for k in keys] == [True, False, False, True, True, False]
    monkeypatch.setattr(hashing, "_CACHE", 8)
    h.token_buckets([f"t:n={i}" for i in range(100)])
    assert len(h._buckets) <= 8  # type: ignore[attr-defined]
    # memories are not part of what a hashing is: equal, and not pickled
    again = pickle.loads(pickle.dumps(h))
    assert again == h and again._buckets == {}  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(SCHEMA)).hashing._buckets == {}


REMEMBERING = FeatureSchema(STEPS, Hashing(buckets=4096))
TRAIT_VALUES = (
    st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True)
    | st.sampled_from(["^5", "~1", "Admin", "0", "", "c", "b=c"]) | st.none()
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["role", "seats", "a=b", "a", "b=c", "tier"]), TRAIT_VALUES),
    st.dictionaries(st.sampled_from(["plan", "employees"]), TRAIT_VALUES),
    st.dictionaries(st.sampled_from(["device", "count"]), TRAIT_VALUES),
)
def test_the_vector_has_the_buckets_of_the_tokens_remembered_or_not(traits, crm, context):
    # serving writes buckets without spelling the crosses out and remembers them per user:
    # always the buckets of the tokens (True is not 1, a text "^5" is not a number's threshold,
    # the key "a=b" with "c" is not "a" with "b=c"), whatever the examples before remembered
    schema = REMEMBERING
    for _ in range(2):
        x = schema.featurize({"traits": traits}, {"found": True, **crm}, context, now_ms=0)
        tokens = schema.tokens({"traits": traits}, {"found": True, **crm}, context)
        assert hashed_of(schema, x) == {schema.bucket(t) for t in tokens}


def test_what_serving_remembers_stays_small_whatever_the_traits():
    # a hostile client's long keys and texts are neither features nor remembered, and a profile
    # of very many traits is featurized without being remembered
    schema = FeatureSchema(STEPS, Hashing())  # its own memory, not the default's
    for i in range(200):
        traits = {"k" * 129: "x", "bio": f"{i}" + "y" * 10_000, "role": "admin", "seats": i}
        assert schema.tokens({"traits": traits})[:1] == ["t:role=admin"]
        schema.featurize({"traits": traits}, None, None, now_ms=0)
    memory = schema.hashing._attrs  # type: ignore[attr-defined]
    assert all(len(str(value)) <= 64 for (_, _, value, _) in memory) and len(memory) == 201
    many = {f"trait{i}": f"v{i}" for i in range(80)}
    x = schema.featurize({"traits": many}, None, None, now_ms=0)
    assert hashed_of(schema, x) == {schema.bucket(t) for t in schema.tokens({"traits": many})}
    assert all(len(key) <= 64 for key in schema.hashing._crosses)  # type: ignore[attr-defined]
