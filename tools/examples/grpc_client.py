#!/usr/bin/env python3
"""Talk to Cohort over gRPC from Python.

    pip install grpcio grpcio-tools
    cohort serve --data-dir /tmp/cohort --grpc-addr 127.0.0.1:7070 --http-addr 127.0.0.1:7071
    python tools/examples/grpc_client.py --addr 127.0.0.1:7070

The Python stubs are generated at start-up from proto/cohort/v1/cohort.proto
into a temporary directory, so nothing generated is kept in the repository.

It ingests two Segment Spec messages, counts segments, checks and reads one
profile, then streams the members of a segment. The messages carry fixed
messageIds, so running it again reports them as duplicates.
"""

import argparse
import importlib.resources
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_stubs(proto_dir):
    """Generates the cohort.v1 modules from the .proto and imports them."""
    with tempfile.TemporaryDirectory(prefix="cohort-stubs-") as out:
        well_known = importlib.resources.files("grpc_tools") / "_proto"
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "cohort/v1/cohort.proto",
        ])
        if status != 0:
            sys.exit(f"protoc failed on {proto_dir}/cohort/v1/cohort.proto")
        sys.path.insert(0, out)
        try:
            from cohort.v1 import cohort_pb2, cohort_pb2_grpc
        finally:
            sys.path.remove(out)
    return cohort_pb2, cohort_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:7070", help="the node's gRPC address")
    parser.add_argument("--proto", default=REPO / "proto", type=pathlib.Path,
                        help="directory holding cohort/v1/cohort.proto")
    args = parser.parse_args()

    pb, rpc = load_stubs(args.proto)
    channel = grpc.insecure_channel(args.addr)
    ingest = rpc.IngestStub(channel)
    query = rpc.QueryStub(channel)

    # 1. Ingest: Segment Spec messages, one JSON text each.
    messages = [
        {"type": "identify", "messageId": "example-1", "userId": "ada",
         "traits": {"plan": "pro", "country": "FR", "age": 36}},
        {"type": "track", "messageId": "example-2", "userId": "ada",
         "event": "purchase", "properties": {"amount": 120, "category": "shoes"}},
    ]
    reply = ingest.IngestBatch(
        pb.IngestBatchRequest(messages=[json.dumps(m) for m in messages]), timeout=10)
    print(f"ingested: {reply.applied} applied, {reply.duplicates} duplicates")
    for r in reply.rejections:
        print(f"  rejected #{r.position} {r.field or '(message)'}: {r.reason}")
    if reply.rejections:
        sys.exit(1)

    # 2. Count several segments at once, all at the same `now`.
    segments = ['plan = "pro"', 'DID "purchase" WHERE amount > 100 IN LAST 7 DAYS']
    counts = query.Count(pb.CountRequest(expressions=segments), timeout=10)
    for expression, n in zip(segments, counts.counts):
        print(f"count {expression!r}: {n} of {counts.universe}")

    # 3. Is one profile in each segment? Profiles are addressed by identifier.
    check = query.Check(pb.CheckRequest(profile="user_id:ada", expressions=segments), timeout=10)
    print(f"check user_id:ada (profile {check.profile_id}): {list(check.matches)}")

    # 4. Everything about the profile; trait values are JSON texts.
    profile = query.GetProfile(pb.GetProfileRequest(profile="user_id:ada", recent_events=5), timeout=10)
    print("profile", profile.profile_id,
          {t.name: json.loads(t.value) for t in profile.traits},
          [e.name for e in profile.recent_events])

    # 5. Who is in: a server stream of pages, with chosen traits.
    members = query.Members(
        pb.MembersRequest(expression='plan = "pro"', traits=["country", "age"], page_size=100),
        timeout=10)
    for page in members:
        for m in page.members:
            print("member", m.profile_id, m.user_id,
                  {k: json.loads(v) for k, v in m.traits.items()})

    channel.close()


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"{e.code().name}: {e.details()}")
