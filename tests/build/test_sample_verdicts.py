"""Each sample's spec says what the builder must conclude (`verdict`, `refusal_reason`): checked here.

A "refused" flavour is either refused by the build, with a blocking reason naming every object in
`refusal_reason`, or built with the warning that a live apply can never switch it (a replaced function
that a running process is always inside): both mean "not hot-patchable into a running process".
"""

from __future__ import annotations

import pytest
from sample_corpus import BUILDS, Sample, load_samples

from hpkg.builder.diff import diff_images
from hpkg.builder.image import load_image
from hpkg.builder.plan import plan_patch

ALWAYS_RUNNING = "is replaced, and a running process is always inside it"
SAMPLE_FLAVOURS = [(s.name, f) for s in load_samples() for f in s.flavours]


@pytest.mark.parametrize(("name", "flavour"), SAMPLE_FLAVOURS, ids=[f"{n}-{f}" for n, f in SAMPLE_FLAVOURS])
def test_the_build_reaches_the_verdict_the_sample_spec_states(
    samples: dict[str, Sample], name: str, flavour: str
):
    sample = samples[name]
    expected = sample.expectations[flavour]
    # A stripped flavour is built as a distribution builds it: stripped files plus their debug files.
    debug = {b: sample.symbols_twin(b, flavour) if flavour == "stripped" else None for b in BUILDS}
    old, new = (load_image(sample.binary(build, flavour), debug[build]) for build in BUILDS)
    plan = plan_patch(diff_images(old, new, parallel=False))
    blocking = plan.verdict.blocking
    never_switchable = [w for w in plan.warnings if ALWAYS_RUNNING in w]
    if expected.verdict == "patchable":
        assert not blocking, [r.line() for r in blocking]
        assert plan.has_content and not never_switchable
        return
    assert blocking or never_switchable, "a refused sample must be refused or warned about"
    said = [r.subject for r in blocking] if blocking else never_switchable
    for subject in expected.refusal_reason:
        assert any(subject in line for line in said), (subject, said)
