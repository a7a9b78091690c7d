"""Real Python clients against a real `cohort serve`.

- Segment's SDK (segment-analytics-python) and RudderStack's
  (rudder-sdk-python) send identify, track, page, group and alias to the
  Segment-compatible HTTP door; the results are read back over gRPC.
- A node with write keys configured refuses a bad key (401) and takes a good one.
- The examples in tools/examples run against the node.
"""

import os
import subprocess
import sys

import grpc
import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from conftest import REPO, wait_until

EXAMPLES = REPO / "tools" / "examples"


def segment_client(server, write_key, errors, max_retries=3, **options):
    """Segment's SDK as an application uses it: queued, sent by a thread."""
    return SegmentClient(write_key, host=server.http_url, on_error=lambda e, batch: errors.append(e),
                         max_retries=max_retries, **options)


def rudder_client(server, write_key, errors, max_retries=3, **options):
    """RudderStack's SDK: `host` is its dataPlaneUrl; gzip is on by default."""
    return RudderClient(write_key, host=server.http_url, on_error=lambda e, batch: errors.append(e),
                        max_retries=max_retries, **options)


def send_the_journey(client, prefix):
    """An anonymous visit, a sign-up, a purchase, a company and the alias that
    links the visit to the user: five messages, each kind once."""
    anon, user = f"{prefix}-anon", f"{prefix}-user"
    client.page(anonymous_id=anon, category="Landing", name="Home", properties={"path": "/"})
    client.identify(user, {"plan": "pro", "age": 31, "address": {"city": "Lyon"}, "tags": ["vip", "beta"]})
    client.track(user, "Order Completed", {"revenue": 42.5, "currency": "EUR"})
    client.group(user, "acme", {"name": "Acme Inc", "employees": 50})
    client.alias(anon, user)
    client.flush()
    return anon, user


def assert_the_journey(server, anon, user):
    assert wait_until(lambda: server.status().messages_applied >= 5), (
        f"status: {server.status()}\nrejected: {server.rejected()}\nlog:\n{server.output()}")
    status = server.status()
    assert (status.messages_applied, status.messages_rejected) == (5, 0), server.rejected()
    assert status.merges == 1, "the alias merges the anonymous profile into the user's"

    counts, universe = server.count(
        'plan = "pro"',
        "age BETWEEN 30 AND 32",
        'address.city = "Lyon"',
        'tags CONTAINS "vip"',
        'DID "Order Completed" WHERE revenue > 40 AND currency = "EUR"',
        'DID "page" WHERE name = "Home" AND category = "Landing" AND path = "/"',
        f'anonymous_id = "{anon}" AND user_id = "{user}"',
        "ALL",
    )
    assert universe == 1, "page (anonymous) and identify (user) were merged by the alias"
    assert counts == [1] * 8

    by_anon, matches = server.check(f"anonymous_id:{anon}", 'plan = "pro"', 'DID "page"', 'DID "Order Completed"')
    by_user, _ = server.check(f"user_id:{user}", "ALL")
    assert matches == [True, True, True]
    assert by_anon == by_user

    profile = server.profile(user)
    assert profile["id"] == by_user
    assert profile["identifiers"] == [f"anonymous_id:{anon}", f"user_id:{user}"]
    traits = profile["traits"]
    assert traits["plan"] == "pro"
    assert traits["age"] == 31
    assert traits["address.city"] == "Lyon"
    assert sorted(traits["tags"]) == ["beta", "vip"]
    assert traits["groups"] == ["acme"]
    assert "employees" not in traits and "name" not in traits, "group traits are not stored"
    events = dict(profile["events"])
    assert profile["event_count"] == 2
    assert events["Order Completed"]["revenue"] == 42.5
    assert events["page"]["name"] == "Home"


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_segment_sdk(server, gzip):
    errors = []
    client = segment_client(server, "any-key", errors, gzip=gzip)
    anon, user = send_the_journey(client, "seg")
    client.shutdown()
    assert errors == []
    assert_the_journey(server, anon, user)


def test_rudder_sdk(server):
    errors = []
    client = rudder_client(server, "any-key", errors)
    assert client.gzip, "rudder-sdk-python gzips by default"
    anon, user = send_the_journey(client, "rudder")
    client.shutdown()
    assert errors == []
    # rudder-sdk-python puts identify traits in context.traits only.
    assert_the_journey(server, anon, user)


def test_groups_segment(server):
    errors = []
    client = segment_client(server, "any-key", errors)
    client.group("grouped-user", "acme", {"name": "Acme Inc"})
    client.shutdown()
    assert errors == []
    assert wait_until(lambda: server.status().messages_applied >= 1), server.rejected()
    assert server.profile("grouped-user")["traits"]["groups"] == ["acme"]
    assert server.count('groups CONTAINS "acme"', "groups EXISTS") == ([1, 1], 1)
    assert server.check("grouped-user", 'groups CONTAINS "acme"')[1] == [True]


def test_rudder_sdk_module_api(server):
    """The module-level API with `dataPlaneUrl`, as RudderStack documents it."""
    import rudderstack.analytics as rudder_analytics

    rudder_analytics.write_key = "any-key"
    rudder_analytics.dataPlaneUrl = server.http_url
    rudder_analytics.sync_mode = True
    try:
        rudder_analytics.identify("module-user", {"plan": "team"})
        rudder_analytics.track("module-user", "Signed Up", {"source": "docs"})
    finally:
        rudder_analytics.default_client = None
    assert wait_until(lambda: server.status().messages_applied >= 2), server.rejected()
    _, matches = server.check("module-user", 'plan = "team"', 'DID "Signed Up" WHERE source = "docs"')
    assert matches == [True, True]


def test_write_keys(make_server):
    server = make_server(write_keys=["good"])

    errors = []
    bad = segment_client(server, "bad", errors)
    bad.identify("intruder", {"plan": "pro"})
    bad.shutdown()
    assert [getattr(e, "status", e) for e in errors] == [401], "Segment SDK, bad key as Basic user and writeKey"

    errors = []
    # max_retries=1: see test_rudder_sdk_gives_up_on_bad_key, it retries a 401 today.
    bad = rudder_client(server, "bad", errors, max_retries=1)
    bad.identify("intruder", {"plan": "pro"})
    bad.shutdown()
    assert len(errors) == 1, "RudderStack SDK, bad key as Basic user: the batch is given up"

    status = server.status()
    assert (status.messages_applied, status.profiles) == (0, 0)
    assert server.count("ALL") == ([0], 0)

    errors = []
    for make_client in (segment_client, rudder_client):
        good = make_client(server, "good", errors)
        good.identify(f"{make_client.__name__}-good", {"plan": "pro"})
        good.shutdown()
    assert errors == []
    assert wait_until(lambda: server.status().messages_applied >= 2), server.rejected()
    counts, universe = server.count('plan = "pro"', 'user_id IN ("segment_client-good", "rudder_client-good")',
                                    'user_id = "intruder"')
    assert (counts, universe) == ([2, 2, 0], 2)


def test_rudder_sdk_gives_up_on_bad_key(make_server):
    server = make_server(write_keys=["good"])
    errors = []
    bad = rudder_client(server, "bad", errors)
    bad.identify("intruder", {"plan": "pro"})
    bad.shutdown()
    assert [getattr(e, "status", e) for e in errors] == [401]


def test_refused_requests_are_logged(make_server):
    server = make_server(write_keys=["good"])
    errors = []
    bad = segment_client(server, "bad", errors)
    bad.identify("intruder", {"plan": "pro"})
    bad.shutdown()
    assert [getattr(e, "status", e) for e in errors] == [401]
    assert wait_until(lambda: "401" in server.output(), timeout=2), server.output()


def run_example(name, *args):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_grpc_client_example(server):
    first = run_example("grpc_client.py", "--addr", server.grpc_addr)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ingested: 2 applied, 0 duplicates" in first.stdout
    assert "count 'plan = \"pro\"': 1 of 1" in first.stdout
    assert "[True, True]" in first.stdout
    assert "member" in first.stdout and "ada" in first.stdout
    again = run_example("grpc_client.py", "--addr", server.grpc_addr)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "ingested: 0 applied, 2 duplicates" in again.stdout


def test_segment_http_example(server):
    result = run_example("segment_http.py", "--host", server.http_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_until(lambda: server.status().messages_applied >= 3), server.rejected()
    _, matches = server.check("grace", 'country = "BE"', 'address.city = "Ghent"', 'DID "signup"',
                              'DID "page" WHERE name = "Pricing"')
    assert matches == [True] * 4
