"""The API's query-string parser: its fast path (nothing to decode) gives what urllib's
``parse_qs`` gives, and both paths refuse too many fields."""

from urllib.parse import parse_qs

import pytest
from hypothesis import given, strategies as st

from paxoslog.server.httpmsg import QUERY_FIELDS_MAX, query_params


def reference(query: str) -> dict:
    parsed = parse_qs(query, keep_blank_values=True, max_num_fields=QUERY_FIELDS_MAX)
    return {name: values[-1] for name, values in parsed.items()}


@pytest.mark.parametrize("query", [
    "key=k1", "key=k1&consistency=lease", "key=", "key", "=v", "a=1&a=2", "a=1&&b=2&",
    "&", "a==b", "key=%2Fetc%2Fpasswd", "key=a+b", "key=%zz", "k%C3%A9y=v", "x=\u00e9"])
def test_known_queries_parse_as_urllib_does(query):
    assert query_params(query) == reference(query)


@given(st.text(alphabet="ab=&%+2F\u00e9", max_size=40))
def test_any_query_parses_as_urllib_does(query):
    try:
        want = reference(query)
    except ValueError:
        with pytest.raises(ValueError):
            query_params(query)
        return
    assert query_params(query) == want


@pytest.mark.parametrize("plus", ["", "+"])
def test_too_many_fields_are_refused_on_both_paths(plus):
    at_limit = "&".join(f"f{i}={plus}" for i in range(QUERY_FIELDS_MAX))
    assert len(query_params(at_limit)) == QUERY_FIELDS_MAX
    with pytest.raises(ValueError):
        query_params(at_limit + "&one=more")
