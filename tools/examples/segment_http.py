#!/usr/bin/env python3
"""Send data to Cohort with Segment's own Python SDK.

    pip install segment-analytics-python
    cohort serve --data-dir /tmp/cohort --grpc-addr 127.0.0.1:7070 --http-addr 127.0.0.1:7071
    python tools/examples/segment_http.py --host http://127.0.0.1:7071

Cohort's HTTP door speaks Segment's tracking API (POST /v1/batch), so an
application already instrumented with Segment only changes `host` and
`write_key`. The SDK sends the key both as the HTTP Basic user name and as
`writeKey` in the body; Cohort accepts either. With no write keys configured
on the node, any key is accepted.
"""

import argparse

from segment import analytics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="http://127.0.0.1:7071", help="the node's HTTP address")
    parser.add_argument("--write-key", default="example-key")
    args = parser.parse_args()

    analytics.write_key = args.write_key
    analytics.host = args.host
    # Send each call at once and raise on an error, instead of queueing it for
    # a background thread; an application would rather keep the default and
    # call analytics.flush() before it exits.
    analytics.sync_mode = True

    analytics.identify("grace", {"plan": "free", "country": "BE", "address": {"city": "Ghent"}})
    analytics.track("grace", "signup", {"source": "ads"})
    analytics.page("grace", category="Docs", name="Pricing", properties={"path": "/pricing"})
    analytics.flush()
    print(f"sent identify, track and page for user grace to {args.host}")


if __name__ == "__main__":
    main()
