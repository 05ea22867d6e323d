"""The contract suite: one set of checks run over every scorer, learner, policy and state core.

As River's ``checks/`` does for its estimators, each family has a few check functions
(:mod:`tests.contracts.checks`) that take a *subject* (:mod:`tests.contracts.subjects`: the
object under test, built the way the product builds it) and assert one contract:

* serialization round trips: state / snapshot / model bytes (and pickle, where the object
  crosses Ray) give an object that behaves the same from then on;
* determinism by seed: the same seed and inputs give the same outputs; another seed, other ones;
* missing and unknown features: awkward inputs are handled (counted, rejected, sanitized),
  never a crash, never a non-finite output;
* inputs not mutated: what a caller passes in is unchanged afterwards, and what it gets back
  does not alias the object's own state.

``test_checks_can_fail`` runs every check once more against a deliberately broken twin of a
subject and expects it to fail, so that no check passes vacuously.
"""
