"""Fixtures: a real `cohort serve` process and gRPC stubs made from the .proto.

The binary is $COHORT_BIN, else target/debug/cohort (tests/python/run.sh
builds it and sets COHORT_BIN). Each server gets free loopback ports and a
temporary data directory, and is stopped by its pid when its test ends.
"""

import importlib.resources
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60
RPC_TIMEOUT_S = 10


def cohort_bin():
    path = pathlib.Path(os.environ.get("COHORT_BIN", REPO / "target" / "debug" / "cohort"))
    if not path.is_file():
        pytest.fail(f"no cohort binary at {path}: run `cargo build` or set COHORT_BIN "
                    "(tests/python/run.sh does both)")
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stubs:
    """The generated cohort.v1 modules: `pb` (messages) and `rpc` (stubs)."""

    def __init__(self, out):
        out = str(out)
        well_known = importlib.resources.files("grpc_tools") / "_proto"
        status = protoc.main([
            "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}", "cohort/v1/cohort.proto",
        ])
        assert status == 0, "grpc_tools.protoc failed on proto/cohort/v1/cohort.proto"
        sys.path.insert(0, out)
        from cohort.v1 import cohort_pb2, cohort_pb2_grpc
        self.pb = cohort_pb2
        self.rpc = cohort_pb2_grpc


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    return Stubs(tmp_path_factory.mktemp("stubs"))


class Server:
    """One `cohort serve` process, its addresses, its output and gRPC clients."""

    def __init__(self, stubs, workdir, write_keys=None):
        self.stubs = stubs
        self.workdir = pathlib.Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "server.log"
        self.config_path = None
        if write_keys is not None:
            self.config_path = self.workdir / "cohort.toml"
            self.config_path.write_text("write_keys = %s\n" % json.dumps(write_keys))
        self.proc = None
        self.channel = None
        self._lines = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ process

    def start(self):
        binary = cohort_bin()
        for attempt in range(3):
            self.grpc_addr = f"127.0.0.1:{free_port()}"
            self.http_addr = f"127.0.0.1:{free_port()}"
            cmd = [str(binary), "serve", "--data-dir", str(self.data_dir),
                   "--grpc-addr", self.grpc_addr, "--http-addr", self.http_addr]
            if self.config_path:
                cmd += ["--config", str(self.config_path)]
            self._lines = []
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, text=True, errors="replace")
            ready = threading.Event()
            threading.Thread(target=self._pump, args=(self.proc, ready), daemon=True).start()
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ready.is_set() and self.proc.poll() is None and time.monotonic() < deadline:
                ready.wait(0.1)
            if ready.is_set():
                break
            exited = self.proc.poll() is not None
            self.stop()
            if not exited:
                pytest.fail(f"cohort serve printed no `cohort ` line within {START_TIMEOUT_S} s:\n"
                            + self.output())
            if "in use" not in self.output().lower() or attempt == 2:
                pytest.fail(f"cohort serve exited with {self.proc.returncode}:\n" + self.output())
            # A port taken between free_port() and the bind: try others.
        self.channel = grpc.insecure_channel(self.grpc_addr)
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT_S)
        self.ingest = stubs_of(self.stubs.rpc.IngestStub, self.channel)
        self.query = stubs_of(self.stubs.rpc.QueryStub, self.channel)
        self.admin = stubs_of(self.stubs.rpc.AdminStub, self.channel)
        return self

    def _pump(self, proc, ready):
        with open(self.log_path, "a") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                with self._lock:
                    self._lines.append(line)
                if line.startswith("cohort "):
                    ready.set()

    def output(self):
        with self._lock:
            return "".join(self._lines)

    def stop(self):
        """Stops the process this fixture started, by its pid."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    # ------------------------------------------------------------ helpers

    @property
    def http_url(self):
        return f"http://{self.http_addr}"

    def count(self, *expressions):
        reply = self.query.Count(self.stubs.pb.CountRequest(expressions=list(expressions)))
        return list(reply.counts), reply.universe

    def check(self, profile, *expressions):
        reply = self.query.Check(self.stubs.pb.CheckRequest(profile=profile, expressions=list(expressions)))
        return reply.profile_id, list(reply.matches)

    def profile(self, profile, recent_events=50):
        p = self.query.GetProfile(self.stubs.pb.GetProfileRequest(profile=profile, recent_events=recent_events))
        return {
            "id": p.profile_id,
            "identifiers": sorted(f"{i.kind}:{i.value}" for i in p.identifiers),
            "traits": {t.name: json.loads(t.value) for t in p.traits},
            "events": [(e.name, json.loads(e.properties)) for e in p.recent_events],
            "event_count": p.event_count,
        }

    def status(self):
        return self.admin.Status(self.stubs.pb.StatusRequest())

    def rejected(self):
        reply = self.admin.ListRejected(self.stubs.pb.ListRejectedRequest(limit=100))
        return [f"#{r.position} {r.field or '(message)'}: {r.reason}" for r in reply.rejections]


class stubs_of:
    """A stub whose calls carry a deadline unless one is given."""

    def __init__(self, cls, channel):
        self._stub = cls(channel)

    def __getattr__(self, name):
        method = getattr(self._stub, name)

        def call(request, **kwargs):
            kwargs.setdefault("timeout", RPC_TIMEOUT_S)
            return method(request, **kwargs)

        return call


@pytest.fixture
def make_server(stubs, tmp_path):
    """Starts servers (`make_server(write_keys=[...])`); stops them all at teardown."""
    started = []

    def make(write_keys=None):
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir()
        server = Server(stubs, workdir, write_keys)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server):
    return make_server()


def wait_until(predicate, timeout=10.0, interval=0.05):
    """Polls `predicate` until it is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
