"""Property-based tests: random and mutated Pod/Service documents into validation.

The promise under test: whatever the document, ``parse_document`` returns a Pod or a Service,
or raises ``ValidationError`` naming at least one field (a non-empty path for any document
that is an object at all). No other exception, ever.

Mutations start from valid documents (tests/unit/test_validate.py's full pod, a full
Service) and change one spot: replace a value with something random, drop a key, add an
unknown key, or wrap a value in a list.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Pod
from nodeagent.model.validate import ServiceDoc, parse_document
from tests.harness.manifests import full_pod, full_service

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "0", "-1", "1e9", "100Mi", "500m", "Always", "TCP", "v1", "Pod", "*"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=20,
)


def check(doc: Any) -> None:
    """The property: a model object, or a ValidationError that names a field."""
    try:
        result = parse_document(doc, source="fuzz.yaml", node_name="node-1")
    except ValidationError as exc:
        assert exc.errors, "a rejection must name at least one field"
        if isinstance(doc, dict):
            for error in exc.errors:
                assert error.path, f"rejection without a field path: {error}"
                assert error.message
        return
    assert isinstance(result, Pod | ServiceDoc)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a document (keys of maps, indexes of lists)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


BASES = (full_pod(), full_service())
BASE_PATHS = tuple(paths(base) for base in BASES)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    which = draw(st.integers(0, len(BASES) - 1))
    doc = copy.deepcopy(BASES[which])
    path = draw(st.sampled_from(BASE_PATHS[which][1:]))  # never the root itself
    *parents, last = path
    holder = doc
    for step in parents:
        holder = holder[step]
    how = draw(st.sampled_from(["replace", "drop", "unknown", "wrap"]))
    if how == "replace":
        holder[last] = draw(json_values)
    elif how == "drop":
        del holder[last]
    elif how == "unknown" and isinstance(holder, dict):
        holder[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    else:
        holder[last] = [holder[last]]
    return doc


@FUZZ
@given(json_values)
def test_random_values_never_crash_validation(doc: Any) -> None:
    check(doc)


@FUZZ
@given(st.dictionaries(st.sampled_from(["apiVersion", "kind", "metadata", "spec"]), json_values))
def test_random_objects_with_the_top_level_keys_never_crash(doc: dict[str, Any]) -> None:
    check(doc)


@FUZZ
@given(
    st.sampled_from(["Pod", "Service"]),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    json_values,
)
def test_random_specs_of_pods_and_services_never_crash(
    kind: str, metadata: dict[str, Any], spec: Any
) -> None:
    check({"apiVersion": "v1", "kind": kind, "metadata": {"name": "x", **metadata}, "spec": spec})


@FUZZ
@given(mutated())
def test_mutated_documents_never_crash_and_rejections_name_the_field(doc: Any) -> None:
    check(doc)


def test_the_bases_are_valid() -> None:
    """The mutations start from documents that parse (or the test would prove little)."""
    for base in BASES:
        assert isinstance(
            parse_document(copy.deepcopy(base), source="fuzz.yaml", node_name="node-1"),
            Pod | ServiceDoc,
        )
